"""Checkpoint conversion: ZeRO -> HF, reshard, Megatron <-> HF."""
