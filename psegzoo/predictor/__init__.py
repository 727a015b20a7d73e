"""mmsegmentation's test pipeline on plain tensors, by concern:

* :mod:`.settings`: test settings (scale, mode, crop, stride, views), checked up front;
* :mod:`.resize`: the keep-ratio resize with OpenCV's bilinear, bit for bit;
* :mod:`.windows`: normalization, sliding windows batched through the model, autocast;
* :mod:`.scores`: scores at the original size in bands of rows; labels, confidences, probabilities;
* :mod:`.memory`: what a prediction needs, estimated before it runs;
* :mod:`.infer`: the orchestration (views, forwards, test-time augmentation, progress);
* :mod:`.stages`: the stages of a prediction, named for torch.profiler;
* :mod:`.devices`: devices, precision and model preparation.

Memory: results at the original size are produced in bands of rows, either into one C x H x W
float32 buffer (the scores are kept) or straight into labels (they are not), so a large image needs
little more than that buffer, or than its labels.
"""
from __future__ import annotations

from .cuda import replays_cuda_graphs
from .devices import (
    DEFAULT_WORKERS,
    autocast_dtype,
    default_workers,
    model_device,
    model_is_channels_last,
    prepare_model,
    select_device,
    torch_dtype,
)
from .infer import MAX_BATCH_IMAGES, SLIDE_BATCH_IMAGES, Inference, Prepared, Progress, View, infer, infer_batch, prepare
from .memory import MemoryEstimate, available_memory, check_memory, estimate_memory
from .resize import rescale_size, resize_bilinear_uint8, resize_image
from .scores import (
    BAND_BYTES,
    argmax_labels,
    banded_labels,
    label_dtype,
    probabilities,
    resize_bands,
    resize_scores,
    to_host,
)
from .settings import MAX_RATIOS, MAX_SIDE, MAX_WINDOWS, InferenceSettings, Size2, default_stride, tta_scale
from .stages import STAGES, stage
from .windows import (
    CPU_BATCH_WINDOWS,
    MAX_BATCH_WINDOWS,
    Normalize,
    host_tensor,
    image_tensor,
    slide_windows,
    to_input,
    upload,
)

__all__ = [
    "BAND_BYTES",
    "CPU_BATCH_WINDOWS",
    "DEFAULT_WORKERS",
    "MAX_BATCH_IMAGES",
    "MAX_BATCH_WINDOWS",
    "MAX_RATIOS",
    "MAX_SIDE",
    "MAX_WINDOWS",
    "SLIDE_BATCH_IMAGES",
    "STAGES",
    "Inference",
    "InferenceSettings",
    "MemoryEstimate",
    "Normalize",
    "Prepared",
    "Progress",
    "Size2",
    "View",
    "argmax_labels",
    "autocast_dtype",
    "available_memory",
    "banded_labels",
    "check_memory",
    "default_stride",
    "default_workers",
    "estimate_memory",
    "host_tensor",
    "image_tensor",
    "infer",
    "infer_batch",
    "label_dtype",
    "model_device",
    "model_is_channels_last",
    "prepare",
    "prepare_model",
    "probabilities",
    "replays_cuda_graphs",
    "rescale_size",
    "resize_bands",
    "resize_bilinear_uint8",
    "resize_image",
    "resize_scores",
    "select_device",
    "slide_windows",
    "stage",
    "to_host",
    "to_input",
    "torch_dtype",
    "tta_scale",
    "upload",
]
