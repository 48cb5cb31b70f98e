"""`megabyte bench`: how fast the models train and generate, and how close to the hardware.

Reading order: `flops` (model FLOPs of a training step, the MFU numerator), `rows` (the models
compared: ours and the other open MEGABYTE implementations), `worker` (one measurement in its own
process), `speed` (the side-by-side table), `precision` (bf16 against fp32 on real text), `long`
(a 1 MiB sequence). Nothing here is imported by the library itself.
"""
