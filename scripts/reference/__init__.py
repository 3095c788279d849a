"""The recorder of ``scripts/record_reference.py``, by seam: the npz file (:mod:`.npz`), calling
TensorFlow without crashing it (:mod:`.tf_calls`), random inputs (:mod:`.inputs`), and one module
per kind of case: :mod:`.forward`, :mod:`.gradients`, :mod:`.errors` (inputs TensorFlow refuses)
and :mod:`.crop2d` (Keras ``Cropping2D``). Each ``record_*`` function appends its cases to a
:class:`.npz.Recorder` in a fixed order, drawing from the generator it is given: the order of the
cases and of the draws is the file's content, so reordering either changes the recorded bytes.
"""

import os

# Before TensorFlow or Keras is imported by any module of the package.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
