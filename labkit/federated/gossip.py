"""Asynchronous decentralised optimisation on Poisson clocks: DADAO and a baseline.

Nodes hold local strongly convex losses f_i; each node fires a gradient clock, each edge a
gossip clock, all independent Poisson processes. DADAO (Nabli and Oyallon, "DADAO:
Decoupled Accelerated Decentralized Asynchronous Optimization", Algorithm 1) keeps six
vectors per node that follow a linear ODE between events, integrated exactly with a
matrix exponential, and jump at events: a gradient jump touches one node, a gossip jump
one edge. The graph enters through chi_1 = 1/lambda_2 of the edge-rate Laplacian and
chi_2 = the largest effective resistance of an edge (halved), both computed here.
Section: chapter 13, "Gossip on Poisson clocks".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import scipy.linalg
import scipy.special

from labkit.validation import check_int, check_real

__all__ = [
    "GossipProblem",
    "GossipRun",
    "graph_constants",
    "logistic_problem",
    "make_graph",
    "run_dadao",
    "run_tracking",
    "sdp_edge_rates",
    "theorem_rate",
]

GRAPHS: tuple[str, ...] = ("ring", "torus", "regular", "complete")


def make_graph(kind: str, n: int, *, seed: int = 0) -> nx.Graph:
    """One of the chapter's topologies on nodes ``0..n-1``.

    Args:
        kind: ``"ring"``, ``"torus"`` (needs a square ``n``), ``"regular"`` (random
            4-regular, redrawn until connected) or ``"complete"``.
        n: number of nodes, at least 2 (at least 5 for ``"regular"``).
        seed: seed of the random 4-regular draw.
    """
    check_int("n", n, 2)
    if kind == "ring":
        g = nx.cycle_graph(n)
    elif kind == "torus":
        side = int(round(n ** 0.5))
        if side * side != n or side < 3:
            raise ValueError(f"n must be a square >= 9 for a torus, got {n}")
        g = nx.convert_node_labels_to_integers(nx.grid_2d_graph(side, side, periodic=True))
    elif kind == "regular":
        if n < 5:
            raise ValueError(f"n must be at least 5 for a 4-regular graph, got {n}")
        for attempt in range(100):
            g = nx.random_regular_graph(4, n, seed=seed + attempt)
            if nx.is_connected(g):
                break
    elif kind == "complete":
        g = nx.complete_graph(n)
    else:
        raise ValueError(f"kind must be one of {GRAPHS}, got {kind!r}")
    return g


def _edge_rates(graph: nx.Graph, rates: np.ndarray | None) -> np.ndarray:
    if not isinstance(graph, nx.Graph) or graph.number_of_nodes() < 2:
        raise ValueError("graph must be a networkx.Graph with at least 2 nodes")
    if not nx.is_connected(graph):
        raise ValueError("graph must be connected: gossip cannot reach every node")
    m = graph.number_of_edges()
    if rates is None:
        return np.full(m, 1.0 / m)
    rates = np.asarray(rates, dtype=float)
    if rates.shape != (m,):
        raise ValueError(f"rates must have one entry per edge ({m}), got {rates.shape}")
    if not np.all(np.isfinite(rates)) or np.any(rates <= 0):
        raise ValueError("rates must be finite and > 0 on every edge")
    return rates


def graph_constants(graph: nx.Graph, rates: np.ndarray | None = None) -> tuple[float, float]:
    """``(chi_1, chi_2)`` of the Laplacian weighted by the edge rates.

    With ``Lam = sum_ij rate_ij (e_i - e_j)(e_i - e_j)^T``: ``chi_1 = 1 / lambda_2(Lam)`` and
    ``chi_2 = max over edges of (1/2) (e_i - e_j)^T Lam^+ (e_i - e_j)``, half the largest
    effective resistance of an edge. By default every edge has rate ``1/|E|`` (the gossip
    clock of total rate 1 picks an edge uniformly). Computed with networkx.

    Raises:
        ValueError: a disconnected graph, or rates that are not > 0 per edge.
    """
    rates = _edge_rates(graph, rates)
    weighted = nx.Graph()
    weighted.add_nodes_from(graph.nodes)
    for (i, j), r in zip(graph.edges, rates):
        weighted.add_edge(i, j, rate=float(r))
    lam2 = nx.algebraic_connectivity(weighted, weight="rate", method="lanczos", tol=1e-12,
                                     seed=0)
    res = nx.resistance_distance(weighted, weight="rate", invert_weight=False)
    chi_2 = max(0.5 * res[i][j] for i, j in graph.edges)
    return 1.0 / float(lam2), float(chi_2)


def theorem_rate(chi_1: float, chi_2: float) -> float:
    """Total gossip rate the theorem prescribes for a unit-rate graph: sqrt(2 chi_1 chi_2).

    Scaling every edge rate by ``lam`` divides both constants by ``lam``; DADAO's condition
    ``chi_1* chi_2* <= 1/2`` then holds with equality at ``lam = sqrt(2 chi_1 chi_2)``.
    """
    chi_1 = check_real("chi_1", chi_1, 0.0, strict=True)
    chi_2 = check_real("chi_2", chi_2, 0.0, strict=True)
    return float(np.sqrt(2.0 * chi_1 * chi_2))


def sdp_edge_rates(graph: nx.Graph, *, floor: float = 0.01) -> np.ndarray:
    """Edge distribution p (summing to 1) maximising lambda_2 of the Laplacian.

    The semidefinite programme (solved with cvxpy)

        maximise t  subject to  sum_ij p_ij L_ij - t (I - 11^T / n) is PSD,
                                sum_ij p_ij = 1,  p_ij >= floor / |E|,

    with L_ij = (e_i - e_j)(e_i - e_j)^T, maximises the algebraic
    connectivity, so it minimises chi_1 = 1 / lambda_2 at a fixed total rate.
    chi_1 chi_2, the product that sets DADAO's message count, is not convex in
    p; lambda_2 is its convex half. The floor keeps every edge's clock running
    (DADAO needs rates > 0).

    Args:
        graph: a connected networkx graph.
        floor: each edge gets at least ``floor / |E|`` of the total, in [0, 1).

    Raises:
        ImportError: cvxpy is not installed.
        ValueError: a disconnected graph or a floor outside [0, 1).
    """
    _edge_rates(graph, None)  # checks the graph
    floor = check_real("floor", floor, 0.0)
    if floor >= 1.0:
        raise ValueError(f"floor must be in [0, 1), got {floor}")
    try:
        import cvxpy as cp
    except ImportError as exc:
        raise ImportError("sdp_edge_rates needs cvxpy (pinned in "
                          "requirements.txt: pip install cvxpy)") from exc
    nodes = list(graph.nodes)
    index = {v: k for k, v in enumerate(nodes)}
    n, m = len(nodes), graph.number_of_edges()
    incidence = np.zeros((n, m))  # (N, M): column e = e_i - e_j
    for e, (i, j) in enumerate(graph.edges):
        incidence[index[i], e], incidence[index[j], e] = 1.0, -1.0
    p, t = cp.Variable(m), cp.Variable()
    lap = incidence @ cp.diag(p) @ incidence.T  # (N, N)
    centred = np.eye(n) - np.ones((n, n)) / n
    constraints = [0.5 * (lap + lap.T) - t * centred >> 0, cp.sum(p) == 1,
                   p >= floor / m]
    cp.Problem(cp.Maximize(t), constraints).solve()
    rates = np.maximum(np.asarray(p.value, dtype=float), floor / m)
    return rates / rates.sum()


@dataclass
class GossipProblem:
    """l2-regularised logistic regression split over nodes.

    ``f_i(x) = mean_k log(1 + exp(-b_k a_k . x)) + (mu/2)|x|^2`` over node i's rows.

    Attributes:
        features: (n, m, d) rows per node; labels: (n, m) in {-1, +1}.
        mu: strong convexity; smooth: L, the largest smoothness constant of an f_i.
        x_star: minimiser of sum_i f_i, found by Newton's method.
    """

    features: np.ndarray
    labels: np.ndarray
    mu: float
    smooth: float = 0.0
    x_star: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n(self) -> int:
        return self.features.shape[0]

    def grad(self, i: int, x: np.ndarray) -> np.ndarray:
        """Gradient of f_i at x."""
        a, b = self.features[i], self.labels[i]
        s = -b * scipy.special.expit(-b * (a @ x))  # no overflow for large margins
        return a.T @ s / len(b) + self.mu * x

    def total_grad(self, x: np.ndarray) -> np.ndarray:
        return sum(self.grad(i, x) for i in range(self.n)) / self.n


def logistic_problem(n: int, *, per_node: int = 20, dim: int = 5, kappa: float = 100.0,
                     seed: int = 0) -> GossipProblem:
    """Split ``gaussian_blobs`` (two classes) over n nodes, sorted by class (non-i.i.d.).

    mu is chosen so that ``L / mu = kappa`` with ``L = max_i lambda_max(A_i^T A_i) / (4 m) + mu``.
    """
    from labkit.data.synthetic import gaussian_blobs

    check_int("n", n, 2)
    check_int("per_node", per_node, 1)
    kappa = check_real("kappa", kappa, 1.0, strict=True)
    x, y = gaussian_blobs(n * per_node, n_classes=2, dim=dim, spread=3.0, seed=seed)
    x = x.double().numpy() / 4.0
    x = x * np.logspace(0.0, -1.5, dim)  # anisotropic: the last directions barely curve
    b = 2.0 * y.double().numpy() - 1.0
    order = np.argsort(b[: n * per_node] + 0.5 * np.arange(n * per_node) / (n * per_node),
                       kind="stable")
    feats = x[order].reshape(n, per_node, dim)
    labs = b[order].reshape(n, per_node)
    curv = max(float(np.linalg.eigvalsh(f.T @ f)[-1]) / (4.0 * len(f)) for f in feats)
    mu = curv / (kappa - 1.0)
    prob = GossipProblem(feats, labs, mu, smooth=curv + mu)
    xs = np.zeros(dim)
    for _ in range(50):  # Newton on the mean of the f_i
        a = feats.reshape(-1, dim)
        bb = labs.reshape(-1)
        p = 1.0 / (1.0 + np.exp(-bb * (a @ xs)))
        hess = (a.T * (p * (1 - p))) @ a / len(bb) + mu * np.eye(dim)
        xs = xs - np.linalg.solve(hess, prob.total_grad(xs))
    prob.x_star = xs
    return prob


@dataclass
class GossipRun:
    """Trace of one run: counts of gradients and messages, and the error at each record.

    ``error`` is ``mean_i |x_i - x*|^2 / |x*|^2``; a gossip event counts two messages.
    """

    grads: np.ndarray
    messages: np.ndarray
    error: np.ndarray

    def to_reach(self, eps: float, what: str = "grads") -> float:
        """Gradients (or messages) spent when the error first falls below ``eps``."""
        eps = check_real("eps", eps, 0.0, strict=True)
        hit = np.nonzero(self.error <= eps)[0]
        counts = self.grads if what == "grads" else self.messages
        return float(counts[hit[0]]) if len(hit) else float("inf")


def _events(n: int, rates: np.ndarray, rng: np.random.Generator, size: int = 2048):
    """Merged Poisson clocks in chunks: rate 1 per node (gradients), rate_ij per edge.

    Yields ``(times, is_grad, node, edge)`` arrays; the clocks are independent, so the
    merged process has rate ``n + sum rates`` and each event picks its clock by rate.
    """
    total = n + rates.sum()
    t0 = 0.0
    while True:
        times = t0 + np.cumsum(rng.exponential(1.0 / total, size=size))
        t0 = float(times[-1])
        is_grad = rng.random(size) < n / total
        node = rng.integers(0, n, size)
        edge = rng.choice(len(rates), size=size, p=rates / rates.sum())
        yield times, is_grad, node, edge


def _check_run(problem: GossipProblem, graph: nx.Graph, rate: float, max_grads: int,
               eps: float) -> None:
    if not isinstance(problem, GossipProblem):
        raise TypeError("problem must be a GossipProblem")
    if graph.number_of_nodes() != problem.n:
        raise ValueError(f"graph must have {problem.n} nodes, got {graph.number_of_nodes()}")
    check_real("rate", rate, 0.0, strict=True)
    check_int("max_grads", max_grads, 1)
    check_real("eps", eps, 0.0, strict=True)


def dadao_constants(mu: float, smooth: float, chi_1_star: float) -> dict[str, float]:
    """DADAO's ODE and jump constants (nu = mu/2), as Algorithm 1 sets them."""
    nu = mu / 2.0
    r = np.sqrt(nu / smooth)
    return dict(nu=nu, alpha=r / 4, alpha_t=r / 8, eta=r / 8, theta=0.5 / r,
                beta=0.5, beta_t=2.0 * chi_1_star / r, delta=r / 4, delta_t=1.0,
                gamma=1.0 / (4 * smooth), gamma_t=1.0 / (4 * np.sqrt(smooth * nu)))


def dadao_ode(c: dict[str, float]) -> np.ndarray:
    """Matrix of the per-node linear ODE on (x, x~, y, y~, z, z~) between events."""
    a, at, e, th, nu = c["alpha"], c["alpha_t"], c["eta"], c["theta"], c["nu"]
    return np.array([
        [-e, e, 0, 0, 0, 0],          # x  drifts to x~
        [e, -e, 0, 0, 0, 0],          # x~ drifts to x
        [0, 0, -a, a, 0, 0],          # y  drifts to y~
        [0, -th * nu, -th, 0, -th, 0],  # y~ pulled by -(nu x~ + y + z)
        [0, 0, 0, 0, -a, a],          # z  drifts to z~
        [0, 0, 0, 0, at, -at],        # z~ drifts to z
    ])


def dadao_grad_jump(s: np.ndarray, g: np.ndarray, c: dict[str, float]) -> None:
    """Node i fires its gradient clock; ``g = grad f_i(x_i)``, s = its (6, d) state."""
    step = g - c["nu"] * s[0] - s[3]  # grad of f_i - nu/2 |x|^2, minus the dual y~
    s[0] -= c["gamma"] * step
    s[1] -= c["gamma_t"] * step
    s[3] += (c["delta"] + c["delta_t"]) * step


def dadao_gossip_jump(si: np.ndarray, sj: np.ndarray, c: dict[str, float]) -> int:
    """Edge (i, j) fires: both send y + z; returns the number of vectors sent."""
    m = (si[2] + si[4]) - (sj[2] + sj[4])  # (e_i - e_j)^T (y + z)
    si[4] -= c["beta"] * m
    sj[4] += c["beta"] * m
    si[5] -= c["beta_t"] * m
    sj[5] += c["beta_t"] * m
    return 2


def ode_flow(ode: np.ndarray):
    """``dts -> exp(ode * dt)`` for a batch of times, exact, through a Jordan form.

    DADAO's matrix has the double eigenvalue 0 (x and z each keep the mean of their pair),
    where numpy's ``eig`` returns nearly parallel eigenvectors; the eigenspace is taken
    from a null space instead. A double eigenvalue with one eigenvector gets its 2x2
    Jordan block ``exp(l dt) [[1, dt], [0, 1]]``. Other structures fall back to ``expm``.
    """
    size = ode.shape[0]
    fallback = lambda dts: scipy.linalg.expm(ode[None] * dts[:, None, None])  # noqa: E731
    vals = np.linalg.eigvals(ode)
    gaps = np.abs(vals[:, None] - vals[None, :]) + np.eye(size)
    i, j = np.unravel_index(np.argmin(gaps), gaps.shape)
    if gaps[i, j] > 1e-6:  # all simple: plain diagonalisation
        lam, vecs = np.linalg.eig(ode)
        inv = np.linalg.inv(vecs)
        return lambda dts: np.einsum("ab,kb,bd->kad", vecs, np.exp(dts[:, None] * lam),
                                     inv).real
    ell = float(np.real(vals[i] + vals[j]) / 2)
    shifted = ode - ell * np.eye(size)
    rest = np.delete(vals, [i, j])
    others = [scipy.linalg.null_space(ode - r * np.eye(size))[:, 0] for r in rest]
    null1 = scipy.linalg.null_space(shifted)
    if null1.shape[1] == 2:  # a double eigenvalue with two eigenvectors: diagonalisable
        vecs = np.column_stack([null1, *others]).astype(complex)
        lam = np.concatenate([[ell, ell], rest])
        inv = np.linalg.inv(vecs)
        return lambda dts: np.einsum("ab,kb,bd->kad", vecs, np.exp(dts[:, None] * lam),
                                     inv).real
    if null1.shape[1] != 1:
        return fallback
    null2 = scipy.linalg.null_space(shifted @ shifted)
    if null2.shape[1] != 2:
        return fallback
    v2 = null2[:, np.argmax(np.linalg.norm(shifted @ null2, axis=0))]
    v1 = shifted @ v2  # shifted v1 = 0, shifted v2 = v1: the Jordan chain
    basis = np.column_stack([v1, v2, *others]).astype(complex)
    inv = np.linalg.inv(basis)

    def flow(dts: np.ndarray) -> np.ndarray:
        k = len(dts)
        jexp = np.zeros((k, size, size), dtype=complex)
        jexp[:, 0, 0] = jexp[:, 1, 1] = np.exp(ell * dts)
        jexp[:, 0, 1] = dts * np.exp(ell * dts)
        idx = np.arange(2, size)
        jexp[:, idx, idx] = np.exp(dts[:, None] * rest[None])
        return np.einsum("ab,kbc,cd->kad", basis, jexp, inv).real

    return flow


def run_dadao(problem: GossipProblem, graph: nx.Graph, *, rate: float, max_grads: int,
              eps: float = 1e-6, edge_rates: np.ndarray | None = None,
              record_every: int = 64, seed: int = 0) -> GossipRun:
    """Simulate DADAO on ``graph`` with total gossip rate ``rate``.

    Every node's gradient clock has rate 1; edge (i, j) gossips at ``rate * p_ij`` with
    ``p`` the edge distribution (uniform by default). chi_1* of the scaled Laplacian sets
    beta~. Stops at ``max_grads`` gradients or once the error is below ``eps``.
    """
    _check_run(problem, graph, rate, max_grads, eps)
    p = _edge_rates(graph, edge_rates)
    p = p / p.sum()
    chi_1, _ = graph_constants(graph, p)
    c = dadao_constants(problem.mu, problem.smooth, chi_1 / rate)
    flow = ode_flow(dadao_ode(c))

    n, d = problem.n, problem.x_star.size
    state = np.zeros((n, 6, d))
    edges = list(graph.edges)
    return _simulate(problem, edges, rate * p, max_grads, eps, record_every, seed,
                     state, flow,
                     lambda s, i: dadao_grad_jump(s, problem.grad(i, s[0]), c),
                     lambda si, sj: dadao_gossip_jump(si, sj, c))


def _simulate(problem, edges, rates, max_grads, eps, record_every, seed, state, flow,
              on_grad, on_gossip) -> GossipRun:
    """Run the merged clocks; ``flow(dts)`` gives the (k, S, S) maps between events."""
    rng = np.random.default_rng(seed)
    n = problem.n
    last = np.zeros(n)
    grads = msgs = 0
    xs = problem.x_star
    scale = float(xs @ xs)
    rec_g, rec_m, rec_e = [], [], []
    k = 0
    for times, is_grad, node, edge in _events(n, rates, rng):
        touched = [(int(node[q]),) if is_grad[q] else edges[edge[q]]
                   for q in range(len(times))]
        if flow is not None:  # the time since each touched node's last event
            dts = []
            for q, nodes in enumerate(touched):
                for i in nodes:
                    dts.append(times[q] - last[i])
                    last[i] = times[q]
            maps = iter(flow(np.array(dts)))
        for q, nodes in enumerate(touched):
            if flow is not None:
                for i in nodes:
                    state[i] = next(maps) @ state[i]
            if is_grad[q]:
                on_grad(state[nodes[0]], nodes[0])
                grads += 1
            else:
                msgs += on_gossip(state[nodes[0]], state[nodes[1]])
            k += 1
            if k % record_every == 0:
                err = float(np.mean(np.sum((state[:, 0] - xs) ** 2, axis=1))) / scale
                rec_g.append(grads)
                rec_m.append(msgs)
                rec_e.append(err)
                if err <= eps or grads >= max_grads or not np.isfinite(err) or err > 1e6:
                    return GossipRun(np.array(rec_g), np.array(rec_m), np.array(rec_e))


def run_tracking(problem: GossipProblem, graph: nx.Graph, *, rate: float, max_grads: int,
                 eps: float = 1e-6, step: float | None = None,
                 record_every: int = 64, seed: int = 0) -> GossipRun:
    """Baseline on the same clocks, no acceleration: asynchronous gradient tracking.

    Node i keeps x_i, a tracker y_i and its last gradient g_i. Gradient clock:
    ``y_i += grad f_i(x_i) - g_i``, then ``x_i -= step * y_i``. Gossip on (i, j): both
    average their x and their y (so sum_i y_i = sum_i g_i always).
    """
    _check_run(problem, graph, rate, max_grads, eps)
    p = _edge_rates(graph, None)
    step = 1.0 / (2 * problem.smooth) if step is None else check_real("step", step, 0.0,
                                                                         strict=True)
    n, d = problem.n, problem.x_star.size
    state = np.zeros((n, 3, d))  # x, y, g
    for i in range(n):
        state[i, 2] = problem.grad(i, state[i, 0])
        state[i, 1] = state[i, 2]

    def on_grad(s: np.ndarray, i: int) -> None:
        g = problem.grad(i, s[0])
        s[1] += g - s[2]
        s[2] = g
        s[0] -= step * s[1]

    def on_gossip(si: np.ndarray, sj: np.ndarray) -> int:
        mean = 0.5 * (si[:2] + sj[:2])
        si[:2] = mean
        sj[:2] = mean
        return 2

    return _simulate(problem, list(graph.edges), rate * p, max_grads, eps, record_every,
                     seed, state, None, on_grad, on_gossip)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (ties get their mean rank; inf ranks last)."""
    import scipy.stats

    return float(scipy.stats.spearmanr(np.asarray(a, float), np.asarray(b, float))[0])


def gossip_figure(runs: dict[str, dict[str, GossipRun]], *, eps: float):
    """Error against gradients and against messages; a dropdown picks the graph.

    ``runs[graph][method]`` is a :class:`GossipRun`. Two panels share the y-axis.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from labkit.plotting import PALETTE, styled

    fig = make_subplots(rows=1, cols=2, shared_yaxes=True,
                        subplot_titles=("against gradients", "against messages"))
    graphs = list(runs)
    for gi, graph in enumerate(graphs):
        for mi, (method, run) in enumerate(runs[graph].items()):
            for col, counts in ((1, run.grads), (2, run.messages)):
                fig.add_scatter(x=counts, y=run.error, mode="lines", name=method,
                                line=dict(color=PALETTE[mi % len(PALETTE)]),
                                showlegend=col == 1, visible=gi == 0, row=1, col=col)
    per = len(fig.data) // len(graphs)
    buttons = [dict(label=g, method="update",
                    args=[{"visible": [k // per == gi for k in range(len(fig.data))]}])
               for gi, g in enumerate(graphs)]
    fig.update_yaxes(type="log", title_text="mean |x_i - x*|^2 / |x*|^2", row=1, col=1)
    fig.update_xaxes(title_text="local gradients (count)", row=1, col=1)
    fig.update_xaxes(title_text="messages (vectors sent)", row=1, col=2)
    fig.add_hline(y=eps, line_dash="dot", line_color="grey")
    fig.update_layout(updatemenus=[dict(type="dropdown", buttons=buttons, x=0.0,
                                        xanchor="left", y=-0.25, yanchor="top")],
                      margin=dict(b=120))
    return styled(fig, title="Distance to the optimum against work, per graph")
