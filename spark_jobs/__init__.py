"""llm-decoder: train a small language-model decoder on Spark, locally or on EMR."""

__version__ = "0.1.0"
