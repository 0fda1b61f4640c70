"""Datasets (bundled digits, CIFAR-10, image folders, arrays) and the preprocessing spec."""
