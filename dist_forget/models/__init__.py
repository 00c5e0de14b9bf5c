"""Model definitions: the size ladder, Hugging Face builders and the megatron-core GPT."""
