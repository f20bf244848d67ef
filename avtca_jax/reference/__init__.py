"""PyTorch reference of the original AVT-CA model, for conversion tests and parity checks.

Importing this package does not import torch; `avtca_jax.reference.torch_avtca` does.
"""
