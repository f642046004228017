"""Training engines: verl (multi-GPU / multi-node, :mod:`.verl`) and TRL (one machine, CPU or one GPU,
:mod:`.trl_engine`), checkpoint export (:mod:`.export`), the retrieval service lifecycle
(:mod:`.service`) and the CPU quickstart (:mod:`.quickstart`). Heavy imports happen inside functions."""
