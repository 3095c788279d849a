"""cropcore: TensorFlow's ``crop_and_resize`` (and its gradients) and Keras's ``Cropping2D``, exactly,
for every array framework.

One op specification (:mod:`cropcore.spec`), many engines: backends plug in through pluggy
(:mod:`cropcore.hookspecs`) and Python entry points (:mod:`cropcore.registry`); every call is
validated once and sent to one backend (:mod:`cropcore.dispatch`); the result comes back in the
caller's array library, on the caller's device.

    >>> import numpy as np, cropcore
    >>> image = np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)
    >>> cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [0], (3, 3))[0, :, :, 0]
    array([[0. , 0.5, 1. ],
           [1. , 1.5, 2. ],
           [2. , 2.5, 3. ]], dtype=float32)
"""

import logging

from cropcore.api import (
    backends,
    crop2d,
    crop_and_resize,
    crop_and_resize_grad_boxes,
    crop_and_resize_grad_image,
    explain,
    roi_align,
    roi_align_grad_image,
)
from cropcore.dispatch import Decision
from cropcore.errors import (
    BackendDeclinedError,
    BackendError,
    BackendUnavailableError,
    OutputTooLargeError,
    UnknownBackendError,
)
from cropcore.hookspecs import BackendInfo, hookimpl
from cropcore.priority import DEFAULT_PRIORITY, get_priority, set_priority, use_backend
from cropcore.registry import Backend

__version__ = "0.1.0"

# A library logs; the application decides where the records go.
logging.getLogger("cropcore").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_PRIORITY",
    "Backend",
    "BackendDeclinedError",
    "BackendError",
    "BackendInfo",
    "BackendUnavailableError",
    "Decision",
    "OutputTooLargeError",
    "UnknownBackendError",
    "__version__",
    "backends",
    "crop2d",
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
    "explain",
    "get_priority",
    "hookimpl",
    "roi_align",
    "roi_align_grad_image",
    "set_priority",
    "use_backend",
]
