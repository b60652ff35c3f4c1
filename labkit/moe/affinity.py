"""Inter-layer expert affinity, and placing experts on devices to exploit it (ExFlow).

Paper: "Exploiting Inter-Layer Expert Affinity for Accelerating Mixture-of-Experts Model
Inference" (ExFlow).

In expert parallelism every device holds a share of each layer's experts, and a token's hidden
state must travel to the device of the expert it is routed to. ExFlow lets the token *stay*
where its last expert ran (every device keeps the attention context it needs), so a token moves
between layers only when its next expert lives on another device: one all-to-all per layer
instead of a dispatch and a combine. How often that happens depends on where the experts sit.
A trained router is far from independent across layers: knowing the expert a token used at
layer ``l`` says a lot about the expert it will use at layer ``l + 1``. The conditional
``P(e_{l+1} = j | e_l = i)`` (the affinity) is measured from routing traces, and experts that
tend to follow each other are put on the same device. ExFlow solves an integer programme for
the placement; here :func:`affinity_placement` solves the same objective exactly for tiny sizes
(dynamic programming over all balanced placements of a layer) and by repeated optimal
assignment (one linear assignment problem per layer, scipy's Hungarian solver) otherwise. The
strength of affinity as one number per layer boundary, the mutual information of consecutive
experts, is :func:`labkit.moe.diagnostics.layer_mutual_information`.

What the miniature leaves out: real devices and an all-to-all (transfers are counted, not
timed), top-k > 1 (a token's hidden state lives where its first-choice expert runs), expert
replication, and the paper's study of how affinity evolves during training.

Shapes: N tokens, L sparse layers, k experts per token, E experts per layer, G devices,
S balanced placements of one layer.
Section: chapter 05, "ExFlow: experts that follow each other".
"""

from __future__ import annotations

import math

import torch

from labkit.validation import check_int, check_tensor

__all__ = ["affinity_counts", "affinity_placement", "conditional_affinity", "device_loads", "expert_paths",
           "round_robin_placement", "transfer_rate", "two_alltoall_rate"]

_MAX_EXACT_STATES = 5000


def _check_paths(paths: torch.Tensor, n_experts: int | None = None) -> torch.Tensor:
    check_tensor("paths", paths, dims=2, dtype=torch.int64, shape="(N, L)")
    if paths.shape[1] < 2:
        raise ValueError(f"paths need at least two layers to have a layer boundary, got L={paths.shape[1]}")
    if paths.numel() and int(paths.min()) < 0:
        raise ValueError("paths must not contain dropped assignments (-1)")
    if n_experts is not None and paths.numel() and int(paths.max()) >= n_experts:
        raise ValueError(f"expert indices must lie in [0, {n_experts}), got max {int(paths.max())}")
    return paths


def expert_paths(trace: torch.Tensor) -> torch.Tensor:
    """The expert each token's hidden state visits at every layer: its first (largest-weight) choice.

    Args:
        trace: routing trace from :func:`labkit.lm.routing_trace`, (N, L, k), or already (N, L).

    Returns:
        (N, L) int64 paths; tokens whose first choice was dropped (-1) anywhere are left out.
    """
    check_tensor("trace", trace, dims=(3, 2), dtype=torch.int64, shape="(N, L, k) or (N, L)")
    paths = trace[..., 0] if trace.dim() == 3 else trace  # (N, L)
    return _check_paths(paths[(paths >= 0).all(dim=1)])


def affinity_counts(paths: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Joint counts of consecutive experts: ``counts[l, i, j]`` tokens went from expert i to j.

    Args:
        paths: (N, L) experts per token and layer.
        n_experts: E.

    Returns:
        (L - 1, E, E) float64 counts; row sums of ``counts[l]`` are the loads of layer l.
    """
    check_int("n_experts", n_experts, 1)
    _check_paths(paths, n_experts)
    n, layers = paths.shape
    pair = paths[:, :-1] * n_experts + paths[:, 1:]  # (N, L - 1) flat (i, j) index
    offset = torch.arange(layers - 1) * n_experts * n_experts  # one block of E*E per boundary
    flat = torch.bincount((pair + offset).reshape(-1), minlength=(layers - 1) * n_experts * n_experts)
    return flat.to(torch.float64).view(layers - 1, n_experts, n_experts)


def conditional_affinity(counts: torch.Tensor) -> torch.Tensor:
    """ExFlow's affinity ``P(e_{l+1} = j | e_l = i)``: each row of the joint counts normalised.

    Args:
        counts: (L - 1, E, E) from :func:`affinity_counts`.

    Returns:
        (L - 1, E, E); rows of experts that received no token are all zero.
    """
    _check_counts(counts)
    rows = counts.sum(dim=-1, keepdim=True)  # (L - 1, E, 1)
    return torch.where(rows > 0, counts / rows.clamp_min(1e-300), torch.zeros_like(counts))


def _check_counts(counts: torch.Tensor) -> None:
    check_tensor("counts", counts, dims=3, dtype="float", shape="(L - 1, E, E)")
    if counts.shape[1] != counts.shape[2]:
        raise ValueError(f"counts must be (L - 1, E, E) with square E x E slices, got {tuple(counts.shape)}")
    if counts.numel() and bool((counts < 0).any()):
        raise ValueError("counts must be non-negative")


def _check_devices(n_experts: int, n_devices: int) -> None:
    check_int("n_experts", n_experts, 1)
    check_int("n_devices", n_devices, 1)
    if n_experts % n_devices:
        raise ValueError(f"n_experts={n_experts} must be divisible by n_devices={n_devices} "
                         "(every device holds the same number of experts per layer)")


def round_robin_placement(n_layers: int, n_experts: int, n_devices: int) -> torch.Tensor:
    """The usual expert-parallel placement: expert e of every layer on device ``e mod G``.

    Returns:
        (L, E) int64 device of each expert.
    """
    check_int("n_layers", n_layers, 1)
    _check_devices(n_experts, n_devices)
    return (torch.arange(n_experts) % n_devices).repeat(n_layers, 1)


def _check_placement(placement: torch.Tensor, layers: int, n_experts: int) -> int:
    check_tensor("placement", placement, dims=2, dtype=torch.int64, shape="(L, E)")
    if tuple(placement.shape) != (layers, n_experts):
        raise ValueError(f"placement must be (L, E) = ({layers}, {n_experts}), got {tuple(placement.shape)}")
    if int(placement.min()) < 0:
        raise ValueError("placement devices must be >= 0")
    return int(placement.max()) + 1


def transfer_rate(paths: torch.Tensor, placement: torch.Tensor) -> torch.Tensor:
    """Fraction of tokens whose hidden state changes device at each layer boundary (ExFlow's cost).

    A token sits on the device of its expert at layer l; going to layer l + 1 it moves iff
    ``placement[l + 1, e_{l+1}] != placement[l, e_l]``. The mean over boundaries is the
    cross-device transfers per token per layer of the single all-to-all per layer.

    Args:
        paths: (N, L) experts per token and layer.
        placement: (L, E) device of each expert, e.g. from :func:`round_robin_placement`.

    Returns:
        (L - 1,) float64, fraction of tokens moved at each boundary.
    """
    check_tensor("placement", placement, dims=2, dtype=torch.int64, shape="(L, E)")
    _check_paths(paths, placement.shape[1])
    _check_placement(placement, paths.shape[1], placement.shape[1])
    device = torch.gather(placement.t(), 0, paths)  # (N, L): placement[l, paths[n, l]]
    return (device[:, 1:] != device[:, :-1]).double().mean(dim=0)


def two_alltoall_rate(paths: torch.Tensor, placement: torch.Tensor, home: torch.Tensor) -> torch.Tensor:
    """Transfers per token and layer of conventional expert parallelism (dispatch + combine).

    Each token lives on its ``home`` device (where its sequence's attention runs); at each layer
    it is sent to its expert's device and the result sent back, two transfers when they differ.

    Args:
        paths: (N, L); placement: (L, E); home: (N,) int64 home device of each token.

    Returns:
        (L,) float64, mean transfers per token at each layer (0, 1 or 2 per token).
    """
    check_tensor("placement", placement, dims=2, dtype=torch.int64, shape="(L, E)")
    _check_paths(paths, placement.shape[1])
    _check_placement(placement, paths.shape[1], placement.shape[1])
    check_tensor("home", home, dims=1, dtype=torch.int64, shape=f"({paths.shape[0]},)")
    if home.shape != (paths.shape[0],):
        raise ValueError(f"home must be an int64 tensor ({paths.shape[0]},), got shape {tuple(home.shape)}")
    device = torch.gather(placement.t(), 0, paths)  # (N, L)
    return 2.0 * (device != home[:, None]).double().mean(dim=0)


def device_loads(paths: torch.Tensor, placement: torch.Tensor) -> torch.Tensor:
    """Share of the tokens each device computes at each layer (balance check of a placement).

    Args:
        paths: (N, L); placement: (L, E).

    Returns:
        (L, G) float64, rows sum to 1; G = ``placement.max() + 1``.
    """
    check_tensor("placement", placement, dims=2, dtype=torch.int64, shape="(L, E)")
    _check_paths(paths, placement.shape[1])
    n_devices = _check_placement(placement, paths.shape[1], placement.shape[1])
    device = torch.gather(placement.t(), 0, paths)  # (N, L)
    onehot = torch.nn.functional.one_hot(device, n_devices).double()  # (N, L, G)
    return onehot.mean(dim=0)


def _balanced_states(n_experts: int, n_devices: int) -> torch.Tensor:
    """Every way to put E experts on G devices, E/G each: (S, E) device per expert."""
    per = n_experts // n_devices
    out: list[tuple[int, ...]] = []

    def extend(prefix: tuple[int, ...], left: list[int]) -> None:  # multiset permutations, in order
        if len(prefix) == n_experts:
            out.append(prefix)
            return
        for d in range(n_devices):
            if left[d]:
                left[d] -= 1
                extend(prefix + (d,), left)
                left[d] += 1

    extend((), [per] * n_devices)
    return torch.tensor(out, dtype=torch.int64)


def _n_balanced(n_experts: int, n_devices: int) -> int:
    return math.factorial(n_experts) // math.factorial(n_experts // n_devices) ** n_devices


def _colocated(counts: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """Tokens that stay on their device for every pair of placements: (S_upper, S_lower)."""
    n_devices = int(max(upper.max(), lower.max())) + 1
    total = torch.zeros(upper.shape[0], lower.shape[0], dtype=torch.float64)
    for d in range(n_devices):
        a, b = (upper == d).double(), (lower == d).double()  # (S, E) one-hot of device d
        total += a @ counts @ b.t()  # sum_{i on d, j on d} counts[i, j]
    return total


def _exact(counts: torch.Tensor, n_devices: int) -> torch.Tensor:
    """Max total co-located tokens over all balanced placements: Viterbi over layers."""
    states = _balanced_states(counts.shape[1], n_devices)  # (S, E)
    score = torch.zeros(states.shape[0], dtype=torch.float64)
    back = []
    for c in counts:  # one layer boundary at a time
        gain = score[:, None] + _colocated(c, states, states)  # (S_prev, S_next)
        score, arg = gain.max(dim=0)
        back.append(arg)
    best = [int(score.argmax())]
    for arg in reversed(back):
        best.append(int(arg[best[-1]]))
    return states[torch.tensor(best[::-1])]


def _assign(gain: torch.Tensor, n_devices: int) -> torch.Tensor:
    """Devices for one layer's experts maximising ``sum_j gain[j, device_j]``, E/G experts each."""
    from scipy.optimize import linear_sum_assignment  # lazy: only the solver needs scipy

    per = gain.shape[0] // n_devices
    slots = gain.repeat_interleave(per, dim=1)  # (E, E): device d owns columns d*per .. d*per+per-1
    rows, cols = linear_sum_assignment(slots.numpy(), maximize=True)
    out = torch.empty(gain.shape[0], dtype=torch.int64)
    out[torch.as_tensor(rows)] = torch.as_tensor(cols) // per
    return out


def _local_search(counts: torch.Tensor, n_devices: int, sweeps: int) -> torch.Tensor:
    """Layer 0 round-robin, each next layer matched to the previous one, then sweeps that re-place
    every layer given both neighbours; each step is an exact assignment, so the objective never drops."""
    layers, n_experts = counts.shape[0] + 1, counts.shape[1]
    place = round_robin_placement(1, n_experts, n_devices).repeat(layers, 1)

    def gain(layer: int) -> torch.Tensor:  # (E, G): tokens kept on device d if expert j of `layer` sits on d
        g = torch.zeros(n_experts, n_devices, dtype=torch.float64)
        onehot = lambda lay: torch.nn.functional.one_hot(place[lay], n_devices).double()  # noqa: E731
        if layer > 0:
            g += counts[layer - 1].t() @ onehot(layer - 1)  # tokens arriving from layer - 1
        if layer < layers - 1:
            g += counts[layer] @ onehot(layer + 1)  # tokens leaving to layer + 1
        return g

    for layer in range(1, layers):  # forward pass: match each layer to the one before
        g = counts[layer - 1].t() @ torch.nn.functional.one_hot(place[layer - 1], n_devices).double()
        place[layer] = _assign(g, n_devices)
    for _ in range(sweeps):
        before = place.clone()
        for layer in range(layers):
            place[layer] = _assign(gain(layer), n_devices)
        if torch.equal(before, place):
            break
    return place


def affinity_placement(counts: torch.Tensor, n_devices: int, *, method: str = "auto", sweeps: int = 10) -> torch.Tensor:
    """Place experts on devices so that consecutive experts of a token share a device (ExFlow).

    Objective (our statement of the problem ExFlow writes as an integer programme): maximise
    ``sum_l sum_{i,j} counts[l, i, j] * [p(l, i) == p(l + 1, j)]``, the tokens that stay on
    their device, over placements with exactly E/G experts of every layer on every device.

    Args:
        counts: (L - 1, E, E) joint counts from :func:`affinity_counts` on *training* traces.
        n_devices: G, dividing E.
        method: ``"exact"`` (dynamic programming over all balanced placements of a layer; only
            when there are at most 5000 of them, e.g. E = 8 on G <= 4), ``"greedy"`` (each layer
            matched to the previous one, then local-search sweeps, each an exact linear
            assignment) or ``"auto"`` (exact when small enough, else greedy).
        sweeps: maximum local-search sweeps of ``"greedy"``.

    Returns:
        (L, E) int64 device of each expert.
    """
    _check_counts(counts)
    n_experts = counts.shape[1]
    _check_devices(n_experts, n_devices)
    check_int("sweeps", sweeps, 0)
    if method not in ("auto", "exact", "greedy"):
        raise ValueError(f"method must be 'auto', 'exact' or 'greedy', got {method!r}")
    small = _n_balanced(n_experts, n_devices) <= _MAX_EXACT_STATES
    if method == "exact" and not small:
        raise ValueError(f"method='exact' enumerates {_n_balanced(n_experts, n_devices)} placements per layer "
                         f"(more than {_MAX_EXACT_STATES}); use method='greedy'")
    if method == "exact" or (method == "auto" and small):
        return _exact(counts, n_devices)
    return _local_search(counts, n_devices, sweeps)
