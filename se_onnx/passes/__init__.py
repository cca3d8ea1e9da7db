"""The onnx-ir passes (one module each: insert, find, fuse, unfuse, strip, on the shared `base`) and the
analyses built on them (inspect, export-weights). Import from `se_onnx.ir` and `se_onnx.errors` only."""
