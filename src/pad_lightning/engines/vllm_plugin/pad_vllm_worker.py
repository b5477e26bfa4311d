"""A vLLM worker extension (`--worker-extension-cls pad_vllm_worker.WeightReload`): reloads the
served model's weights in place from a folder of safetensors, as a training process that
samples its rollouts on this server asks before every rollout round.

This file is imported by vLLM inside its own environment (the folder is put on PYTHONPATH when
the server starts); it imports nothing from pad_lightning.

`reload_weights` alone leaves a tied output head stale on vLLM's CPU backend: the head's packed
GEMM weight is built once from the embedding when the model loads, so after a reload the
logits would come from the old embedding. The head's `process_weights_after_loading` rebuilds
it from the (reloaded, tied) weight; on backends without that step it is a no-op.
"""


class WeightReload:
    def pad_reload_weights(self, path: str) -> str:
        self.model_runner.reload_weights(weights_path=path)
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        method = getattr(head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(head)
        return "ok"
