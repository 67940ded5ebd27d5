"""Export a trained network for deployment: ONNX (FP32/FP16), post-training INT8 (Q/DQ for TensorRT, U8S8 for
ONNX Runtime, TensorRT calibration cache), TensorRT engines and DeepStream-ready models.

Modules (each usable on its own; ``posekit.stages.export`` chains them):

    artifacts.py    file names (TAO's ``model.<H>.<W>.<precision>...``) and summary records (size, sha256)
    onnx_export.py  torch -> ONNX (NCHW or NHWC input) + ONNX Runtime parity check against torch
    fp16.py         FP32 ONNX -> FP16 ONNX (FP32 I/O kept by option)
    calibration.py  TAO's calibration image sampler, the calibration data file, the ONNX Runtime data reader
    quantize.py     one calibration (ONNX Runtime calibrators) -> Q/DQ ONNX for TensorRT + CPU INT8 ONNX
    calib_cache.py  TensorRT's calibration cache text format (write / read)
    tensorrt.py     engine building (TensorRT 10 and 11) and the equivalent ``trtexec`` commands
    deploy.py       post-processing folded into the graph + DeepStream ``nvinfer`` config
"""
