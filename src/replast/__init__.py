"""replast: restore the plasticity of pretrained image classifiers before fine-tuning."""

__version__ = "0.1.0"
