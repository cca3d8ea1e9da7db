"""Runs the se-onnx command line as `python -m se_onnx`."""

from se_onnx.cli import main

raise SystemExit(main())
