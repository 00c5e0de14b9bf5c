"""The on-disk formats of checkpoints, one writer and one reader each (imports neither engine/ nor convert/).

formats.py: one format per engine (expected files, verify, its backend's save and load), keyed by engine;
meta.py: meta.json, hf_config.json, the trainer's client state, the resume checks and `reshard_meta`;
zero.py: single / DeepSpeed ZeRO; megatron.py: the legacy per-TP/PP-rank folders; megatron_dist.py:
megatron-core's torch_dist (megatron_folder.py: finding it, common.pt; megatron_layout.py: its global
tensors and a rank's blocks; dcp_io.py: PyTorch DCP reads and writes); megatron_train.py:
engine=megatron's checkpoints in it; hf.py: HF folders as conversions read them and our optimizer.pt;
init_from.py: `model.init_from` resolved to an HF folder before a model is built."""
