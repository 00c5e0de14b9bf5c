"""The training engine: config, backends (single / deepspeed / megatron), checkpoints, the trainer loop."""
