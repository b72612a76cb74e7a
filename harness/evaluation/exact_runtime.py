"""Eval on CTranslate2 float32, used only where it is exact: the same replies and log-likelihoods as transformers.

`ExactRuntimeLM` is lm-eval's transformers model with two methods swapped: greedy generation runs in CTranslate2's
float32 generator, and log-likelihoods come from its `score_batch`. Tokenization, truncation, batching, stop sequences
and decoding stay lm-eval's own, so a reply can only differ where the two runtimes' arithmetic picks another token.
Every eval checks that on its first examples, for each decoding it generates with, and keeps transformers for any
decoding (or for log-likelihoods) where it finds a difference: CTranslate2's repetition penalty, for one, counts only
generated tokens, where transformers' counts the prompt too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import torch

from supportbench.decoding import CONTROLS
from supportbench.deploy import runtime
from supportbench.evaluation.shrinking_batch import ShrinkingBatchHFLM
from supportbench.files import sha256_file, staged_dir
from supportbench.models import cache_root

CHECK_REQUESTS = 8  # the first requests of each kind, answered by both runtimes at every eval
# measured: with either control on, CTranslate2 and transformers pick other tokens (they count other tokens as seen)
CONTROLS_DIFFER = "CTranslate2's repetition controls differ from transformers' (measured); not tried"
LOGLIK_RTOL = 1e-4  # per-example log-likelihoods must agree within this relative difference
NAME = "ctranslate2-float32"


def available() -> str | None:
    """None when the exact runtime can run here, else why not."""
    if importlib.util.find_spec("ctranslate2") is None:
        return "CTranslate2 is not installed (pip install 'supportbench[deploy]')"
    if torch.cuda.is_available():
        return "a GPU is present; transformers is the fast path there"
    return None


def converted(model_path: str, adapter: str | None) -> Path:
    """A float32 CTranslate2 folder of the base model (merged with the adapter when given), converted once per content
    and kept in the model cache."""
    from supportbench.evaluation.score_cache import weights_digest

    parts = [weights_digest(model_path), sha256_file(Path(adapter) / "adapter_model.safetensors") if adapter else ""]
    folder = cache_root().parent / "ct2-float32" / hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
    if (folder / "model.bin").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".merging-") as merged:
        source = Path(model_path)
        if adapter:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32)
            PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(merged)
            AutoTokenizer.from_pretrained(model_path).save_pretrained(merged)
            source = Path(merged)
        with staged_dir(folder) as tmp:
            runtime.convert(source, tmp, quantization=None)
    return folder


def decoding_key(controls: dict[str, Any]) -> str:
    """One decoding's repetition controls as a key of the checks: `greedy`, or e.g. `no_repeat_ngram_size=6`."""
    return ",".join(f"{k}={controls[k]}" for k in CONTROLS if k in controls) or "greedy"


class ExactRuntimeLM(ShrinkingBatchHFLM):
    """lm-eval's transformers model whose plain greedy generation and log-likelihoods run on CTranslate2 float32 once
    a check finds them exact.

    The first call of each kind runs its first CHECK_REQUESTS requests on transformers too: CTranslate2's answers to
    all requests are kept only when those agree (`checks` records each verdict); otherwise transformers answers them
    all, as `--backend hf` would.
    """

    def __init__(self, ct2_folder: Path, **hflm_args: Any) -> None:
        super().__init__(**hflm_args)
        self.generator = runtime.load_generator(ct2_folder, compute_type="float32")
        self.checks: dict[str, dict[str, Any]] = {}  # "greedy", a decoding with controls, or "loglikelihood"
        self._fast = False

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        controls = {k: v for k, v in requests[0].args[1].items() if k in CONTROLS}  # one eval decodes all alike
        if controls:
            self.checks[decoding_key(controls)] = {"exact": False, "reason": CONTROLS_DIFFER}
            return super().generate_until(requests, disable_tqdm)
        return self._checked("greedy", super().generate_until, requests, compare_replies)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._checked("loglikelihood", super().loglikelihood, requests, compare_logliks)

    def _checked(self, key: str, answer: Any, requests: list[Any], compare: Any) -> list[Any]:
        try:
            if key in self.checks:
                self._fast = self.checks[key]["exact"]
                return answer(requests, True)
            head = requests[:CHECK_REQUESTS]
            reference = answer(head, True)
            self._fast = True
            fast = answer(requests, True)
            self.checks[key] = compare(reference, fast[: len(head)])
            if self.checks[key]["exact"]:
                return fast
            print(
                f"eval falls back to transformers for {key}: {NAME} differs on the first requests ({self.checks[key]})"
            )
            self._fast = False
            return answer(requests, True)
        finally:
            self._fast = False

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **kwargs: Any) -> torch.Tensor:
        if not self._fast:
            return super()._model_generate(context, max_length, stop, **kwargs)
        mask = kwargs["attention_mask"]
        prompts = [
            self.tokenizer.convert_ids_to_tokens(row[m.bool()].tolist()) for row, m in zip(context, mask, strict=True)
        ]
        produced: list[list[int]] = [[] for _ in prompts]

        def on_token(index: int, token_id: int) -> bool:
            produced[index].append(token_id)
            tail = self.tokenizer.decode(produced[index][-16:], skip_special_tokens=False)
            return any(s in tail for s in stop)  # the rest of the row would be cut at the stop sequence anyway

        new = runtime.generate(self.generator, prompts, max_length - context.shape[1], on_token)
        width = max(map(len, new), default=0)
        pad = self.tokenizer.pad_token_id
        rows = [row.tolist() + ids + [pad] * (width - len(ids)) for row, ids in zip(context, new, strict=True)]
        return torch.tensor(rows, dtype=context.dtype)

    def _loglikelihood_tokens(
        self, requests: list[Any], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        """Each continuation's summed log-probability (is_greedy is not computed: our tasks do not use it)."""
        if not self._fast:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        answers = []
        for start in range(0, len(requests), self.batch_size_per_gpu or 1):
            chunk = requests[start : start + (self.batch_size_per_gpu or 1)]
            tokens = [(ctx + cont)[-(self.max_length + 1) :] for _, ctx, cont in chunk]
            scored = self.generator.score_batch(
                [self.tokenizer.convert_ids_to_tokens(t) for t in tokens], max_input_length=0
            )
            for (key, _, cont), result in zip(chunk, scored, strict=True):
                answer = (float(sum(result.log_probs[-len(cont) :])), False)
                answers.append(answer)
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return answers

    def record(self, decoding: dict[str, Any]) -> dict[str, Any]:
        """The runtime that generated with this decoding and scored the log-likelihoods, and every check."""
        kinds = {"generation": decoding_key(decoding), "perplexity": "loglikelihood"}
        used = {
            kind: NAME if self.checks[key]["exact"] else "transformers"
            for kind, key in kinds.items()
            if key in self.checks
        }
        return {**used, "checks": self.checks}


def compare_replies(hf: list[str], fast: list[str]) -> dict[str, Any]:
    """Whether the fast runtime's replies are transformers' own."""
    same = sum(a == b for a, b in zip(hf, fast, strict=True))
    return {"requests": len(hf), "identical_replies": same, "exact": same == len(hf)}


def compare_logliks(hf: list[tuple[float, bool]], fast: list[tuple[float, bool]]) -> dict[str, Any]:
    """Whether the fast runtime's log-likelihoods agree with transformers' within LOGLIK_RTOL."""
    worst = max((abs(a - b) / max(abs(a), 1e-12) for (a, _), (b, _) in zip(hf, fast, strict=True)), default=0.0)
    return {"requests": len(hf), "max_rel_diff": worst, "rtol": LOGLIK_RTOL, "exact": worst <= LOGLIK_RTOL}
