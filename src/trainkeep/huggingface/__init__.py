"""Hugging Face integrations (``trainkeep.huggingface.transformers``), as in ``ray.train.huggingface``."""
