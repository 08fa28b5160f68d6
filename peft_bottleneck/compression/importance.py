"""Layer importance scored while the HF ``Trainer`` trains, and the tools to act on it (pruning, AdapterDrop).

Every score is "higher = more important", per layer of one layer stack:

- ``block_influence``  1 - cos(layer input, layer output) per token, padding masked (ShortGPT's Block Influence).
- ``angular_distance`` arccos(cos(h_l, h_{l+n})) / pi over blocks of ``n`` contiguous layers, assigned to the
  block's first layer (Gromov et al.); with n = 1 it is the angular form of block influence.
- ``gate_fisher``      mean squared gradient of a virtual residual gate g_l on the layer's update
  (h_out = h_in + g_l (F(h_in))), dL/dg_l = sum_t <dL/dh_out, h_out - h_in>, from hooks: works with a frozen base.
- ``taylor``           |dL/dg_l|: first-order estimate of the loss change when the layer is removed.
- ``adapter_norm``     mean norm of the layer's adapter outputs (our adapters only).
- ``weight_grad_norm`` summed gradient norms of the layer's trainable weights: a named baseline, known to be poor.
- ``ablation``         loss increase on a calibration set when the layer is skipped (one-shot); computed by
  ``calibrate`` (the callback runs it at the end when given a calibration set).
- ``ablation_greedy``  the greedy iterative order (SLEB-style: remove the layer whose removal hurts least, repeat),
  as scores: the layer removed first scores lowest. Also from ``calibrate``; the order itself is in
  ``ablation_order``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Optional, Sequence

import torch
from transformers import TrainerCallback

from ..tuners.base.layer import AdapterLayer
from .calibration import calibrate, least_important
from .pruning import prune_layers
from .report import write_report
from .stacks import choose_stack

TRAINING_METHODS = ("block_influence", "angular_distance", "gate_fisher", "taylor", "adapter_norm", "weight_grad_norm")
CALIBRATION_METHODS = ("ablation", "ablation_greedy")
METHODS = (*TRAINING_METHODS, *CALIBRATION_METHODS)
# Defaults chosen on validation in benchmarks/layer_importance.py: of all methods, greedy ablation's k = 2 drop-sets
# scored best on the validation split; without a calibration set, gate Fisher's did (and it ranks layers like
# calibration ablation, Spearman ~0.9).
DEFAULT_METHOD = "gate_fisher"
DEFAULT_CALIBRATED_METHOD = "ablation_greedy"


def default_prune_method(calibrated: bool) -> str:
    """The pruning score used when none is named: greedy ablation with a calibration set, else gate Fisher."""
    return DEFAULT_CALIBRATED_METHOD if calibrated else DEFAULT_METHOD


def _hidden(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over tokens of a (batch, tokens) tensor, skipping padding."""
    if mask is None or mask.shape != values.shape:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _in_backward() -> bool:
    # a checkpointed layer re-runs its forward inside backward: do not count it twice
    return torch._C._current_graph_task_id() != -1


class LayerScorer:
    """Hooks on one layer stack that accumulate the training-time scores; ``scores()`` reads them out."""

    def __init__(self, model, methods: Sequence[str] = TRAINING_METHODS, stack: Optional[str] = None,
                 angular_block: int = 1) -> None:
        unknown = sorted(set(methods) - set(TRAINING_METHODS))
        if unknown:
            raise ValueError(f"Unknown importance method(s) {unknown}; training-time methods: {list(TRAINING_METHODS)} "
                             "(and 'ablation', computed by calibrate()).")
        self.stack = choose_stack(model, stack)
        self.layers = list(self.stack.layers)
        self.methods = tuple(methods)
        self.angular_block = angular_block
        self.model = model
        self._sums = defaultdict(lambda: torch.zeros(len(self.layers), dtype=torch.float64))
        self._counts = defaultdict(lambda: torch.zeros(len(self.layers), dtype=torch.float64))
        self._mask = None
        self._inputs: dict[int, torch.Tensor] = {}
        self._delta_norms: dict[int, list] = defaultdict(list)
        self._handles = []

    # hooks
    def attach(self) -> LayerScorer:
        self._handles.append(self.model.register_forward_pre_hook(self._capture_mask, with_kwargs=True))
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._pre_hook(index), with_kwargs=True))
            self._handles.append(layer.register_forward_hook(self._post_hook(index), with_kwargs=True))
        if "adapter_norm" in self.methods:
            for index, layer in enumerate(self.layers):
                for adapter in (m for m in layer.modules() if isinstance(m, AdapterLayer)):
                    self._watch_adapter(index, adapter)
        return self

    def _watch_adapter(self, index: int, adapter: AdapterLayer) -> None:
        """The norm of what the adapters add: the adapted layer's output minus its wrapped module's."""
        captured = {}

        def base_output(module, args, output):
            captured["base"] = output

        def adapter_output(module, args, output):
            base = captured.pop("base", None)
            if base is not None and not _in_backward() and isinstance(output, torch.Tensor) and \
                    base.shape == output.shape:
                self._delta_norms[index].append((output.detach().float() - base.detach().float()).norm(dim=-1).mean())

        self._handles.append(adapter.base_layer.register_forward_hook(base_output))
        self._handles.append(adapter.register_forward_hook(adapter_output))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._inputs.clear()
        self._delta_norms.clear()

    def _capture_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _pre_hook(self, index):
        def hook(module, args, kwargs):
            if not _in_backward():
                self._inputs[index] = args[0] if args else kwargs.get("hidden_states")
        return hook

    def _post_hook(self, index):
        def hook(module, args, kwargs, output):
            if _in_backward() or index not in self._inputs:
                return
            h_in, h_out = self._inputs[index], _hidden(output)
            if not isinstance(h_in, torch.Tensor) or h_in.shape != h_out.shape:
                return
            with torch.no_grad():
                self._similarity_scores(index, h_in.detach(), h_out.detach())
            if h_out.requires_grad and {"gate_fisher", "taylor"} & set(self.methods):
                update = (h_out - h_in).detach()
                h_out.register_hook(self._gate_gradient_hook(index, update))
            self._inputs.pop(index - self.angular_block + 1, None)  # later layers' windows start after it
        return hook

    def _similarity_scores(self, index, h_in, h_out):
        mask = self._mask
        if mask is not None and mask.shape != h_out.shape[:2]:
            mask = None
        if "block_influence" in self.methods:
            cosine = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
            self._add("block_influence", index, _masked_mean(1 - cosine, mask))
        start = index - self.angular_block + 1
        if "angular_distance" in self.methods and start >= 0 and start in self._inputs:
            first = self._inputs[start].detach().float()
            cosine = torch.nn.functional.cosine_similarity(first, h_out.float(), dim=-1).clamp(-1, 1)
            self._add("angular_distance", start, _masked_mean(torch.arccos(cosine) / math.pi, mask))

    def _gate_gradient_hook(self, index, update):
        def hook(grad):
            gate_grad = (grad.detach().float() * update.float()).flatten(1).sum(dim=1)  # per example
            if "gate_fisher" in self.methods:
                self._add("gate_fisher", index, gate_grad.pow(2).mean())
            if "taylor" in self.methods:
                self._add("taylor", index, gate_grad.mean().abs())
        return hook

    def _add(self, method, index, value):
        self._sums[method][index] += float(value)
        self._counts[method][index] += 1

    def after_backward(self) -> None:
        """Read what only exists between backward and the optimizer step (gradient norms), and adapter norms."""
        if "weight_grad_norm" in self.methods:
            for index, layer in enumerate(self.layers):
                norms = [p.grad.detach().float().norm() for p in layer.parameters() if p.grad is not None]
                if norms:
                    self._add("weight_grad_norm", index, torch.stack(norms).sum())
        for index, recorded in self._delta_norms.items():
            if recorded:
                self._add("adapter_norm", index, torch.stack(recorded).mean())
        self._delta_norms.clear()
        self._inputs.clear()

    def scores(self) -> dict[str, list[float]]:
        return {
            method: (self._sums[method] / self._counts[method].clamp(min=1)).tolist()
            for method in self.methods
            if self._counts[method].sum() > 0
        }


class LayerImportanceCallback(TrainerCallback):
    """Scores every layer of a layer stack during ``Trainer.train()``.

    Scores go into the Trainer's logs (``layer_importance/<method>/<layer>``, so TensorBoard and other loggers see
    them if this callback runs before theirs: use ``callback.attach(trainer)``), and at the end into
    ``<output_dir>/layer_importance.json`` and ``layer_importance.png``. With ``calibration_batches`` the ablation
    scores (one-shot and greedy) are added at the end. With ``prune_to`` (layers to keep) the model is pruned at the
    end by ``prune_method`` (default: greedy ablation when there are calibration batches, else gate Fisher); heal it
    with a short fine-tune (``heal``) before use. Greedy ablation runs ``greedy_steps`` removal rounds (default: as
    many as layers to prune with ``prune_to``, else all), each one calibration pass per remaining layer.
    """

    def __init__(self, methods: Sequence[str] = TRAINING_METHODS, stack: Optional[str] = None,
                 calibration_batches: Optional[Sequence[dict]] = None, prune_to: Optional[int] = None,
                 prune_method: Optional[str] = None, angular_block: int = 1, output_dir: Optional[str] = None,
                 log_scores: bool = True, greedy_steps: Optional[int] = None) -> None:
        unknown = sorted(set(methods) - set(METHODS)) if not isinstance(methods, str) else [methods]
        if unknown:
            raise ValueError(f"`methods` has unknown method(s) {unknown}; known: {list(METHODS)}.")
        for name, value in (("prune_to", prune_to), ("greedy_steps", greedy_steps), ("angular_block", angular_block)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be a positive integer (layers), got {value!r}.")
        prune_method = prune_method or default_prune_method(calibrated=bool(calibration_batches))
        if prune_method not in METHODS:
            raise ValueError(f"`prune_method` must be one of {list(METHODS)}, got {prune_method!r}.")
        if prune_method in CALIBRATION_METHODS and not calibration_batches:
            raise ValueError(f"`prune_method={prune_method!r}` needs `calibration_batches`.")
        if prune_to is not None and prune_method not in CALIBRATION_METHODS and prune_method not in methods:
            raise ValueError(f"`prune_method`={prune_method!r} must be one of the scored `methods` {list(methods)}.")
        self.training_methods = tuple(m for m in methods if m not in CALIBRATION_METHODS)
        self.stack = stack
        self.calibration_batches = calibration_batches
        self.prune_to = prune_to
        self.prune_method = prune_method
        self.angular_block = angular_block
        self.output_dir = output_dir
        self.log_scores = log_scores
        self.greedy_steps = greedy_steps
        self.scorer: Optional[LayerScorer] = None
        self.result: dict = {}

    def attach(self, trainer) -> LayerImportanceCallback:
        """Add this callback ahead of the Trainer's loggers, so their ``on_log`` sees the scores."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.scorer = LayerScorer(model, self.training_methods, self.stack, self.angular_block).attach()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.scorer is not None:
            self.scorer.after_backward()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.scorer is None or logs is None or not self.log_scores:
            return
        for method, values in self.scorer.scores().items():
            for index, value in enumerate(values):
                logs[f"layer_importance/{method}/{index}"] = value

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.scorer is None:
            return
        self.scorer.detach()
        result = {"stack": self.scorer.stack.path, "layers": len(self.scorer.layers), "scores": self.scorer.scores(),
                  "global_step": state.global_step}
        if self.calibration_batches:
            start = time.perf_counter()
            # greedy ablation costs ~L^2/2 calibration passes: stop once the layers to prune are known
            steps = self.greedy_steps or (len(self.scorer.layers) - self.prune_to if self.prune_to else None)
            calibration = calibrate(model, self.calibration_batches, stack=self.scorer.stack.path,
                                    greedy_steps=steps)
            for method in CALIBRATION_METHODS:
                result["scores"][method] = calibration[method]
            result["ablation_order"] = calibration["ablation_order"]
            result["calibration_seconds"] = time.perf_counter() - start
        if self.prune_to is not None:
            scores = result["scores"][self.prune_method]
            drop = least_important(scores, len(scores) - self.prune_to)
            prune_layers(model, drop=drop, stack=self.scorer.stack.path)
            result["pruned"] = {"method": self.prune_method, "dropped": drop}
        self.result = result
        out = self.output_dir or args.output_dir
        if out and state.is_world_process_zero:
            write_report(result, out)


