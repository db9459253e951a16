"""The residual recorder: forward pre-hooks on each layer's pre-attn and pre-MLP modules
(the family's two hook sites, :mod:`rsdyn.models.adapters`) record their input, the
residual stream, at one position per sequence and nothing else; the hooks are removed in
``finally``. Capture, teleportation and the Jacobian chain check all record through it."""

from __future__ import annotations

import torch

from rsdyn.models.adapters import hook_sites


class ResidualRecorder:
    """Context manager that records the residual stream at every sublayer.

    Set ``positions`` (LongTensor (B,), one index per row) before each forward; after
    it, ``states`` is a float32 tensor (B, 2L, D): sublayer 2l = input of layer l's
    pre-attn site, 2l+1 = input of its pre-MLP site, at those positions.
    ``positions=None`` records every position: ``states`` is then (B, T, 2L, D).
    """

    def __init__(self, model: torch.nn.Module, family: str = "auto"):
        self.sites = hook_sites(model, family)
        self.n_sublayers = 2 * len(self.sites)
        self.positions: torch.Tensor | None = None
        self.states: torch.Tensor | None = None
        self._handles: list = []

    def _hook(self, sublayer: int):
        def record(module, args, kwargs):  # noqa: ARG001 - hook signature
            hidden = args[0] if args else kwargs["hidden_states"]
            if self.positions is None:
                picked = hidden
            else:
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                picked = hidden[rows, self.positions.to(hidden.device)]
            if self.states is None or self.states.shape[0] != hidden.shape[0] or self._fresh:
                shape = (*picked.shape[:-1], self.n_sublayers, picked.shape[-1])
                self.states = torch.empty(shape, dtype=torch.float32, device=hidden.device)
                self._fresh = False
            self.states[..., sublayer, :] = picked.float()

        return record

    def reset(self) -> None:
        """Start a new forward: the next recorded value allocates fresh storage."""
        self._fresh = True

    def __enter__(self) -> ResidualRecorder:
        self._fresh = True
        try:
            for layer, (pre_attn, pre_mlp) in enumerate(self.sites):
                self._handles.append(pre_attn.register_forward_pre_hook(self._hook(2 * layer), with_kwargs=True))
                self._handles.append(pre_mlp.register_forward_pre_hook(self._hook(2 * layer + 1), with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.remove()
