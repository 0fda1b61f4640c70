"""INT8 calibration: statistics, calibrators, Q/DQ placement, TensorRT calibration cache."""
