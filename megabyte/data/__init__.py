"""Data path: prepared byte datasets and the batch source for training.

Modules (import the one you need; importing this package loads nothing heavy):

* :mod:`megabyte.data.format`  -- the dataset directory format and its atomic writer
* :mod:`megabyte.data.dataset` -- ``load_dataset`` and the resumable ``BatchSampler``
* :mod:`megabyte.data.text`, :mod:`~megabyte.data.image`, :mod:`~megabyte.data.audio`
  -- ``prepare_text``, ``prepare_image``, ``prepare_audio``
* :mod:`megabyte.data.build`, :mod:`megabyte.data.sources` -- shared reading and splitting
* :mod:`megabyte.data.codecs` -- exact bytes <-> PNG / WAV, for preparing data and writing samples
"""
