"""NimLLM: train a language model of your own, from scratch, on your own text."""
__version__ = "0.1.0"
