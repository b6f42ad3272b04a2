"""Model-level algorithms that training and the tools both use: adversarial attacks and their input
space, autoregressive decoding, int8 quantization and pruning, the energy meter. Below ``tasks`` and
``train``, above ``models``."""
