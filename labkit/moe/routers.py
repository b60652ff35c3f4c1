"""Routers: who decides which experts a token visits.

A router maps a token's hidden state to one logit per expert. Two kinds share one interface,
``router(h, state) -> (logits, new_state)``, so an MoE layer does not care which it has:

- :class:`LinearRouter`: each layer scores experts from its own input alone (Switch,
  Mixtral). ``state`` passes through untouched.
- :class:`RecurrentRouter`: the Layerwise Recurrent Router of RMoE (Qiu et al., "Layerwise
  Recurrent Router for Mixture-of-Experts", arXiv:2408.06793). A GRU cell shared by every
  layer carries a routing state from layer to layer: layer ``l`` projects its input,
  ``r_l = W_l h_l``, updates the state ``s_l = GRU(r_l, s_{l-1})`` and scores experts from
  it, ``logits_l = G_l s_l`` (the paper's eq. for the recurrent router). So a layer's choice
  can depend on what earlier layers chose, which independent routers cannot express. We add a
  LayerNorm before ``G_l``: the GRU state lies in (-1, 1)^R, several times smaller than the
  LayerNormed hidden state a linear router reads, and with Adam that made the recurrent
  router's logits move several times slower, leaving its choices near uniform in short runs.
- :class:`PreGateRouter`: Read-ME's decoupled router (Cai et al., "Read-ME: Refactorizing LLMs as
  Router-Decoupled Mixture of Experts with System Co-Design", arXiv:2410.19123). Every layer's
  router reads the *input* embedding of the token (the routing state, set once by the model)
  instead of the layer's hidden state, so all layers' experts are known before the backbone
  runs: a server can prefetch experts and batch tokens by expert ahead of time. Read-ME goes
  one step further and lets a single router decide for every layer; ``GPTConfig(router=
  "pregate_shared")`` builds that by handing one :class:`PreGateRouter` to every sparse block.

What the miniature leaves out: RMoE's GRU runs on the same token across layers exactly as
here; we do not reproduce its variants (other recurrent cells, detached states).

Shapes: N tokens, D model width, E experts, R routing-state width.
Section: chapter 05, "RMoE: routers with memory" and "Read-ME: routing before the backbone".
"""

from __future__ import annotations

import torch
from torch import nn

from labkit.validation import check_int

__all__ = ["LinearRouter", "PreGateRouter", "RecurrentRouter", "Router"]


class Router(nn.Module):
    """Interface: ``forward(h (N, D), state (N, R) | None) -> (logits (N, E), state)``."""

    n_experts: int

    def forward(self, h: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class LinearRouter(Router):
    """``logits = h W_g``: an independent router per layer (Switch Transformer eq. 1)."""

    def __init__(self, d_model: int, n_experts: int) -> None:
        super().__init__()
        self.n_experts = check_int("n_experts", n_experts, 1)
        self.gate = nn.Linear(check_int("d_model", d_model, 1), n_experts, bias=False)

    def forward(self, h: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.gate(h), state


class RecurrentRouter(Router):
    """RMoE's router: a GRU cell, shared across layers, carries the routing state.

    Args:
        d_model: D.
        n_experts: E.
        gru: the :class:`torch.nn.GRUCell` (input R, hidden R) shared by all layers' routers;
            pass the same object to every layer.
    """

    def __init__(self, d_model: int, n_experts: int, gru: nn.GRUCell) -> None:
        super().__init__()
        if not isinstance(gru, nn.GRUCell):
            raise TypeError(f"gru must be a torch.nn.GRUCell shared by the layers, got {type(gru).__name__}")
        self.n_experts = check_int("n_experts", n_experts, 1)
        width = gru.hidden_size
        if gru.input_size != width:
            raise ValueError(f"the GRU cell must map R -> R, got input {gru.input_size}, hidden {width}")
        self.project = nn.Linear(check_int("d_model", d_model, 1), width, bias=False)  # W_l
        self.gru = gru  # shared
        self.norm = nn.LayerNorm(width)  # puts the state on the scale a linear router sees (a LayerNormed h)
        self.gate = nn.Linear(width, n_experts, bias=False)  # G_l

    def reset_parameters(self) -> None:
        """Unit-variance projection, so the state depends on the token rather than on the GRU's biases.

        With the transformer's usual small initialisation (std 0.02) the projected input is
        tiny, every token gets nearly the same state and so the same experts, and training
        first has to undo that collapse.
        """
        nn.init.normal_(self.project.weight, std=self.project.in_features ** -0.5)

    def forward(self, h: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if state is not None and state.shape != (h.shape[0], self.gru.hidden_size):
            raise ValueError(f"routing state must be (N, R) = ({h.shape[0]}, {self.gru.hidden_size}), got {tuple(state.shape)}")
        new_state = self.gru(self.project(h), state)  # s_l = GRU(W_l h_l, s_{l-1})
        return self.gate(self.norm(new_state)), new_state  # logits_l = G_l LN(s_l)


class PreGateRouter(Router):
    """Read-ME's pre-gating router: ``logits_l = G_l e`` from the token's input embedding ``e``.

    The model passes ``e`` (N, D) as the routing state to every layer; the router returns it
    unchanged, so it never depends on the backbone's hidden states.
    """

    def __init__(self, d_model: int, n_experts: int) -> None:
        super().__init__()
        self.n_experts = check_int("n_experts", n_experts, 1)
        self.gate = nn.Linear(check_int("d_model", d_model, 1), n_experts, bias=False)

    def forward(self, h: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if state is None or state.shape != h.shape:
            raise ValueError("PreGateRouter needs the token embeddings (N, D) as routing state; "
                             "use it inside labkit.lm.GPT with router='pregate'")
        return self.gate(state), state
