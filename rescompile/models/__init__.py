"""ResNet definitions, the registry of architecture names, and model loading."""
