"""Routers over whole models: pick an expert, escalate to a dearer model, or mix a safe and a usable one.

Papers: "Doing More with Less -- Implementing Routing Strategies in Large Language Model-Based
Systems: An Extended Survey"; "MoGU: A Framework for Enhancing Safety of Open-Sourced LLMs While
Preserving Their Usability"; the router of "SambaNova SN40L: Scaling the AI Memory Wall with
Dataflow and Composition of Experts".

Three routers that read a query before any model answers it:

- an *expert router* (Composition of Experts): a logistic regression that names the expert
  expected to answer best (:func:`train_expert_router`);
- a *cost-aware router* (the survey's predictive routing): a ridge regression predicts how much a
  dearer model would gain over a cheap one on this query, and the query goes to the dearer model
  when the predicted gain clears a threshold; sweeping the threshold traces a cost-quality curve
  (:func:`threshold_routing`), compared with the single models by :func:`frontier_margins`;
- a *MoGU router*: a small network that weighs, per input, a usable and a safe variant of one
  model, so harmful inputs get the safe variant's refusal and benign ones the usable answer
  (:func:`train_mogu_router`, :func:`mogu_logits`).

What the miniature leaves out: LLM routers and LLM experts (the models routed here are byte
n-grams and tiny MLPs), cascades that run the cheap model first, MoGU's routers inside every
layer reading hidden states (ours reads the input and mixes output logits), and real harmful
instructions: the "harmful" region of :class:`SafetyTask` is a synthetic rule.

Shapes: Q queries, F features, E experts or models, N inputs, D input width, C task classes.
Section: chapter 05, "Routing whole models: Composition of Experts, MoGU and query routing".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from labkit.validation import check_int, check_tokens

from .model_routing import NGramLM

__all__ = ["ExpertRouter", "FrontierMargins", "MoGURouter", "RoutingCurve", "SafetyMetrics", "SafetyTask",
           "fit_gain_predictor", "frontier_margins", "make_safety_task", "mogu_logits", "prompt_features",
           "safety_metrics", "threshold_routing", "train_classifier", "train_expert_router", "train_mogu_router"]


def _matrix(name: str, value: object, rows: int | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[0] == 0 or not value.is_floating_point():
        raise ValueError(f"{name} must be a non-empty 2-D float tensor")
    if rows is not None and value.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got {value.shape[0]}")
    return value


def _vector(name: str, value: object, length: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.shape != (length,):
        raise ValueError(f"{name} must be a tensor of shape ({length},)")
    return value


def prompt_features(tokens: torch.Tensor, *, prompt_len: int, models: Sequence[NGramLM] = ()) -> torch.Tensor:
    """What a router sees of a query: its prompt, summarised.

    The square root of the prompt's byte histogram (a unit vector), then, for each of ``models``
    (small n-grams, e.g. the bigram tables of the experts), the prompt's bits per byte under it
    divided by 8, then a bias of 1. Scoring the prompt with a small model per expert makes the
    router a tiny language model itself, as the router of a CoE usually is.

    Args:
        tokens: (Q, L) bytes.
        prompt_len: P <= L, the bytes read.
        models: small n-gram models whose prompt scores are features.

    Returns:
        (Q, 256 + len(models) + 1) float32.
    """
    tokens = check_tokens("tokens", tokens, dims=2, shape="(Q, L) of bytes", min_length=1)
    check_int("prompt_len", prompt_len, 1, tokens.shape[1])
    if not all(isinstance(m, NGramLM) for m in models):
        raise TypeError("models must be NGramLM instances")
    prompt = tokens[:, :prompt_len]
    hist = F.one_hot(prompt, 256).sum(dim=1).float() / prompt_len  # (Q, 256)
    scores = [m.bits_per_byte(prompt).float()[:, None] / 8 for m in models]  # (Q, 1) each
    return torch.cat([hist.sqrt(), *scores, torch.ones(len(tokens), 1)], dim=1)


@dataclass(frozen=True, eq=False)
class ExpertRouter:
    """A linear router: expert logits = features @ weight; the argmax expert answers.

    Attributes:
        weight: (F, E) float32.
    """

    weight: torch.Tensor

    @property
    def n_params(self) -> int:
        """Weights of the router (its cost, with any n-gram tables its features read)."""
        return int(self.weight.numel())

    def route(self, features: torch.Tensor) -> torch.Tensor:
        """(Q, F) features -> (Q,) int64 chosen expert."""
        _matrix("features", features)
        if features.shape[1] != self.weight.shape[0]:
            raise ValueError(f"features must have {self.weight.shape[0]} columns, got {features.shape[1]}")
        return (features.float() @ self.weight).argmax(dim=1)


def train_expert_router(features: torch.Tensor, losses: torch.Tensor, *, l2: float = 1e-3,
                        steps: int = 100) -> ExpertRouter:
    """Fit a multinomial logistic regression that names, per query, the expert with the lowest loss.

    The target of a training query is ``argmin_e losses[q, e]`` (a CoE router is trained to send
    a prompt to the expert that answers it best); full-batch L-BFGS, so the fit is deterministic.

    Args:
        features: (Q, F) router inputs of the training queries, e.g. :func:`prompt_features`.
        losses: (Q, E) each expert's loss (bits per byte) on each training query, E >= 2.
        l2: weight decay.
        steps: L-BFGS iterations.

    Returns:
        An :class:`ExpertRouter`.
    """
    x = _matrix("features", features).float()
    losses = _matrix("losses", losses, len(x))
    if losses.shape[1] < 2:
        raise ValueError(f"a router needs at least two experts, got {losses.shape[1]}")
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    check_int("steps", steps, 1)
    target = losses.argmin(dim=1)
    weight = torch.zeros(x.shape[1], losses.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([weight], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight, target) + l2 * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ExpertRouter(weight=weight.detach())


def fit_gain_predictor(features: torch.Tensor, gain: torch.Tensor, *, l2: float = 1.0) -> torch.Tensor:
    """Ridge regression of a per-query quality gain on router features (closed form).

    Args:
        features: (Q, F) of the router's training queries.
        gain: (Q,) loss of the cheap model minus loss of the dear one, per query.
        l2: ridge penalty, > 0.

    Returns:
        (F,) weights; the predicted gain of new queries is ``features @ weights``.
    """
    x = _matrix("features", features).double()
    y = _vector("gain", gain, len(x)).double()
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    gram = x.T @ x + l2 * torch.eye(x.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, x.T @ y).float()


@dataclass(frozen=True)
class RoutingCurve:
    """Cost and loss of a two-model router at each threshold (all tensors of shape (n,)).

    Attributes:
        thresholds: predicted-gain thresholds; a query goes to the dear model above its threshold.
        cost: mean cost per query.
        loss: mean loss per query (bits per byte).
        share: fraction of queries sent to the dear model.
    """

    thresholds: torch.Tensor
    cost: torch.Tensor
    loss: torch.Tensor
    share: torch.Tensor


def threshold_routing(predicted_gain: torch.Tensor, *, loss_cheap: torch.Tensor, loss_dear: torch.Tensor,
                      cost_cheap: float, cost_dear: float, thresholds: torch.Tensor,
                      router_cost: float = 0.0) -> RoutingCurve:
    """Send a query to the dear model when its predicted gain exceeds a threshold; sweep the threshold.

    The survey's predictive routing: only the chosen model runs, so a query costs ``cost_cheap``
    or ``cost_dear`` (plus ``router_cost``), and the loss is that model's loss on the query.

    Args:
        predicted_gain: (Q,) the router's predicted gain of the dear model on each test query.
        loss_cheap, loss_dear: (Q,) each model's actual loss on the test queries.
        cost_cheap, cost_dear: cost of one query on each model, cost_cheap < cost_dear.
        thresholds: (n,) thresholds to evaluate.
        router_cost: added to every query's cost.

    Returns:
        A :class:`RoutingCurve`.
    """
    if not isinstance(predicted_gain, torch.Tensor) or predicted_gain.dim() != 1 or predicted_gain.numel() == 0:
        raise ValueError("predicted_gain must be a non-empty 1-D tensor")
    q = predicted_gain.numel()
    cheap, dear = _vector("loss_cheap", loss_cheap, q).double(), _vector("loss_dear", loss_dear, q).double()
    if not 0 <= cost_cheap < cost_dear or router_cost < 0:
        raise ValueError(f"need 0 <= cost_cheap < cost_dear and router_cost >= 0, got {cost_cheap}, {cost_dear}, "
                         f"{router_cost}")
    if not isinstance(thresholds, torch.Tensor) or thresholds.dim() != 1 or thresholds.numel() == 0:
        raise ValueError("thresholds must be a non-empty 1-D tensor")
    up = predicted_gain.double()[None, :] > thresholds.double()[:, None]  # (n, Q) True = dear model
    share = up.double().mean(dim=1)
    loss = torch.where(up, dear, cheap).mean(dim=1)
    cost = router_cost + cost_cheap + share * (cost_dear - cost_cheap)
    return RoutingCurve(thresholds=thresholds.double(), cost=cost, loss=loss, share=share)


@dataclass(frozen=True)
class FrontierMargins:
    """How a router's (cost, loss) point compares with the single models (loss: lower is better).

    Attributes:
        dominance: loss of the best single model that costs no more than the router, minus the
            router's loss (> 0: no single model at that cost or less is as good; inf if none is
            that cheap).
        interpolation: loss on the straight line between the two single models whose costs
            bracket the router's, minus the router's loss (> 0: above the line; nan outside).
        below, above: indices of the bracketing single models (-1 when there is none).
    """

    dominance: float
    interpolation: float
    below: int
    above: int


def frontier_margins(cost: float, loss: float, *, single_costs: torch.Tensor,
                     single_losses: torch.Tensor) -> FrontierMargins:
    """Margins of one routed operating point over the single models' cost-quality points.

    Args:
        cost: the router's mean cost per query.
        loss: the router's mean loss.
        single_costs: (M,) cost of each single model.
        single_losses: (M,) loss of each single model on the same queries.

    Returns:
        A :class:`FrontierMargins`.
    """
    if not isinstance(single_costs, torch.Tensor) or single_costs.dim() != 1 or single_costs.numel() == 0:
        raise ValueError("single_costs must be a non-empty 1-D tensor")
    costs = single_costs.double()
    losses = _vector("single_losses", single_losses, costs.numel()).double()
    cheaper = costs <= cost
    dominance = float(losses[cheaper].min() - loss) if bool(cheaper.any()) else float("inf")
    below = int(torch.where(cheaper, costs, -torch.inf).argmax()) if bool(cheaper.any()) else -1
    above = int(torch.where(~cheaper, costs, torch.inf).argmin()) if bool((~cheaper).any()) else -1
    interpolation = float("nan")
    if below >= 0 and above >= 0:
        t = (cost - costs[below]) / (costs[above] - costs[below])
        interpolation = float(losses[below] + t * (losses[above] - losses[below]) - loss)
    return FrontierMargins(dominance=dominance, interpolation=interpolation, below=below, above=above)


@dataclass(frozen=True, eq=False)
class SafetyTask:
    """A synthetic task with a harmful region: inputs x ~ N(0, I_D), task label argmax(x @ teacher),
    harmful when ``x @ direction > threshold``. The refusal output is class index ``n_classes``.

    Attributes:
        teacher: (D, C) weights that define the task labels.
        direction: (D,) unit vector that defines the harmful region.
        threshold: harmful above it; x @ direction is standard normal.
    """

    teacher: torch.Tensor
    direction: torch.Tensor
    threshold: float

    @property
    def n_classes(self) -> int:
        return int(self.teacher.shape[1])

    @property
    def refuse(self) -> int:
        """Index of the refusal output."""
        return self.n_classes

    def flagged(self, x: torch.Tensor, *, margin: float = 0.0) -> torch.Tensor:
        """(N,) bool: ``x @ direction > threshold - margin`` (a margin > 0 flags more: over-caution)."""
        return x @ self.direction > self.threshold - margin

    def sample(self, n: int, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw ``n`` inputs: x (N, D) float32, task label (N,) int64, harmful (N,) bool."""
        check_int("n", n, 1)
        x = torch.randn(n, self.teacher.shape[0], generator=generator)
        return x, (x @ self.teacher).argmax(dim=1), self.flagged(x)


def make_safety_task(*, dim: int = 16, n_classes: int = 4, harmful_rate: float = 0.2, seed: int = 0) -> SafetyTask:
    """Draw a :class:`SafetyTask`: random teacher and direction, threshold set for ``harmful_rate``.

    Args:
        dim: D, input width.
        n_classes: C task classes (the refusal is an extra output, index C).
        harmful_rate: expected share of harmful inputs, in (0, 1).
        seed: seeds the teacher and the direction.

    Returns:
        A :class:`SafetyTask`; sample inputs from it with :meth:`SafetyTask.sample`.
    """
    check_int("dim", dim, 2)
    check_int("n_classes", n_classes, 2)
    check_int("seed", seed, 0)
    if not 0 < harmful_rate < 1:
        raise ValueError(f"harmful_rate must be in (0, 1), got {harmful_rate}")
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(dim, n_classes, generator=gen)
    direction = torch.randn(dim, generator=gen)
    threshold = float(torch.special.ndtri(torch.tensor(1.0 - harmful_rate, dtype=torch.float64)))
    return SafetyTask(teacher=teacher, direction=direction / direction.norm(), threshold=threshold)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


def _fit(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], *, epochs: int, lr: float) -> None:
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(epochs):  # full batch: deterministic for a seed
        opt.zero_grad()
        loss_fn().backward()
        opt.step()


def train_classifier(x: torch.Tensor, target: torch.Tensor, *, n_outputs: int, hidden: int = 64, epochs: int = 300,
                     lr: float = 1e-2, refuse_weight: float = 1.0, seed: int = 0) -> nn.Sequential:
    """Train one variant: an MLP with ``n_outputs`` logits (the last one is "refuse"), full-batch Adam.

    Args:
        x: (N, D) inputs.
        target: (N,) class per input in [0, n_outputs).
        n_outputs: C + 1 logits.
        hidden, epochs, lr: the MLP's width and its training.
        refuse_weight: weight of the refusal class in the cross-entropy (> 1: refusals matter more).
        seed: seeds the initialisation.

    Returns:
        The trained MLP, in eval mode.
    """
    x = _matrix("x", x)
    check_int("n_outputs", n_outputs, 2)
    if not isinstance(target, torch.Tensor) or target.shape != (len(x),) or target.is_floating_point():
        raise ValueError(f"target must be an integer tensor of shape ({len(x)},)")
    if int(target.min()) < 0 or int(target.max()) >= n_outputs:
        raise ValueError(f"target classes must lie in [0, n_outputs={n_outputs})")
    if not refuse_weight > 0:
        raise ValueError(f"refuse_weight must be > 0, got {refuse_weight}")
    torch.manual_seed(seed)
    model = _mlp(x.shape[1], check_int("hidden", hidden, 1), n_outputs)
    weight = torch.ones(n_outputs)
    weight[-1] = refuse_weight
    _fit(list(model.parameters()), lambda: F.cross_entropy(model(x), target, weight=weight),
         epochs=check_int("epochs", epochs, 1), lr=lr)
    return model.eval()


class MoGURouter(nn.Module):
    """Per-input weights (usable, safe) from a small MLP; they sum to one (softmax)."""

    def __init__(self, dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = _mlp(check_int("dim", dim, 1), check_int("hidden", hidden, 1), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, 2) weights: column 0 the usable variant, column 1 the safe one."""
        return self.net(x).softmax(dim=-1)


def mogu_logits(x: torch.Tensor, usable: nn.Module, safe: nn.Module,
                router: MoGURouter) -> tuple[torch.Tensor, torch.Tensor]:
    """MoGU's combination: ``w_usable(x) * usable(x) + w_safe(x) * safe(x)`` (here on output logits).

    Returns:
        logits (N, C + 1) and the router's weights (N, 2).
    """
    _matrix("x", x)
    weights = router(x)
    return weights[:, :1] * usable(x) + weights[:, 1:] * safe(x), weights


def train_mogu_router(x: torch.Tensor, label: torch.Tensor, harmful: torch.Tensor, usable: nn.Module,
                      safe: nn.Module, *, refuse: int, supervise: float = 1.0, harmful_weight: float = 2.0,
                      hidden: int = 32, epochs: int = 300, lr: float = 1e-2, seed: int = 0) -> MoGURouter:
    """Train only the router, the two variants frozen, so the mixture answers as wanted.

    The wanted answer is the refusal on harmful inputs and the task label on benign ones. The loss
    (ours) is the cross-entropy of the mixed logits plus ``supervise`` times a binary
    cross-entropy that pushes the safe weight to 1 on harmful inputs and to 0 on benign ones;
    harmful inputs count ``harmful_weight`` times in both, since missing one is the costlier error.

    Args:
        x: (N, D) the router's (small) labelled training set.
        label: (N,) task labels.
        harmful: (N,) bool, which inputs are harmful.
        usable, safe: the two trained variants (not changed).
        refuse: index of the refusal output.
        supervise: weight of the term on the router's weights, >= 0.
        harmful_weight: weight of a harmful input relative to a benign one, > 0.
        hidden, epochs, lr, seed: the router MLP and its full-batch Adam training.

    Returns:
        The trained :class:`MoGURouter`, in eval mode.
    """
    x = _matrix("x", x)
    _vector("label", label, len(x))
    if not isinstance(harmful, torch.Tensor) or harmful.dtype != torch.bool or harmful.shape != (len(x),):
        raise ValueError(f"harmful must be a bool tensor of shape ({len(x)},)")
    if not supervise >= 0 or not harmful_weight > 0:
        raise ValueError(f"need supervise >= 0 and harmful_weight > 0, got {supervise}, {harmful_weight}")
    with torch.no_grad():
        out_usable, out_safe = usable(x), safe(x)
    check_int("refuse", refuse, 0, out_safe.shape[1] - 1)
    target = torch.where(harmful, refuse, label)
    weight = torch.where(harmful, float(harmful_weight), 1.0)
    weight = weight / weight.mean()
    torch.manual_seed(seed)
    router = MoGURouter(x.shape[1], hidden)

    def loss() -> torch.Tensor:
        w = router(x)  # (N, 2)
        mixed = w[:, :1] * out_usable + w[:, 1:] * out_safe
        answer = (F.cross_entropy(mixed, target, reduction="none") * weight).mean()
        steer = F.binary_cross_entropy(w[:, 1].clamp(1e-6, 1 - 1e-6), harmful.float(), weight=weight)
        return answer + supervise * steer

    _fit(list(router.parameters()), loss, epochs=check_int("epochs", epochs, 1), lr=lr)
    return router.eval()


@dataclass(frozen=True)
class SafetyMetrics:
    """Refusal rate on harmful inputs, accuracy and refusal rate on benign ones (fractions)."""

    harmful_refusal: float
    benign_accuracy: float
    benign_refusal: float


def safety_metrics(logits: torch.Tensor, label: torch.Tensor, harmful: torch.Tensor, *, refuse: int) -> SafetyMetrics:
    """Score a variant or the mixture: did it refuse the harmful inputs and answer the benign ones?

    Args:
        logits: (N, C + 1) outputs; the argmax is the answer.
        label: (N,) task labels.
        harmful: (N,) bool; both harmful and benign inputs must be present.
        refuse: index of the refusal output.

    Returns:
        A :class:`SafetyMetrics` of fractions.
    """
    logits = _matrix("logits", logits)
    n = len(logits)
    if not isinstance(harmful, torch.Tensor) or harmful.dtype != torch.bool or harmful.shape != (n,):
        raise ValueError(f"harmful must be a bool tensor of shape ({n},)")
    _vector("label", label, n)
    check_int("refuse", refuse, 0, logits.shape[1] - 1)
    if bool(harmful.all()) or not bool(harmful.any()):
        raise ValueError("need both harmful and benign inputs to score safety")
    pred = logits.argmax(dim=1)
    benign = ~harmful
    return SafetyMetrics(harmful_refusal=float((pred[harmful] == refuse).double().mean()),
                         benign_accuracy=float((pred[benign] == label[benign]).double().mean()),
                         benign_refusal=float((pred[benign] == refuse).double().mean()))
