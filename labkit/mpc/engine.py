"""The party context: what a secure program sees at each party (inputs, openings, dealer pieces).

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023), built in
SecretFlow-SPU, where one program is written once and every party runs it on its shares.

Intuition: a secure program is SPMD. The *same* Python function runs at the three parties
P0, P1 (computing) and P2 (the dealer); it receives a :class:`Party` and handles
:class:`~labkit.mpc.shared.Shared` values, each holding only this party's share. Operators
on shares run the protocols; whenever a protocol needs to communicate it calls this context,
which sends, receives, counts rounds and logs every message. Because the program's control
flow may not depend on secrets (a shared value has no truth value), every party, dealer
included, walks through the same sequence of protocol steps. The dealer runs the program
on *placeholders* (its "shares" are zeros of the right shapes: it holds no share of
anything): at each step that needs correlated randomness it draws it, sends the two
parties their pieces and moves on; it never receives a message, so its traffic is
input-independent and could all be sent beforehand.

Randomness: each party owns a private generator (:class:`~labkit.mpc.prg.PRG`) seeded from
the OS inside its own thread or process; no seed is a public argument, none is ever sent.
Only a run opted into ``insecure_seed`` derives the generators from a public integer (for
bit-identical reruns), and every result of such a run says ``secure=False``.

Values: the engine knows shared values only through the class registered with
:meth:`Party.register_value_type` (``Shared`` registers itself), so this module does not import
:mod:`labkit.mpc.shared`; protocol functions return their results through their operands
(``x.wrap(share, frac_bits)``), as CrypTen's protocols return through the tensor they act on.

The primitives for writing a protocol (:mod:`labkit.mpc.beaver` and
:mod:`labkit.mpc.compare` are the examples): :meth:`Party.correlated` (pieces from the dealer),
:meth:`Party.exchange` (P0 and P1 swap tensors in one round), :meth:`Party.open` /
:meth:`Party.open_xor` (reconstruct masked values), :meth:`Party.scope` (label messages).

What the miniature leaves out: malicious security (parties follow the program), programs
whose control flow depends on revealed values (the dealer only sees shapes), and
scheduling independent openings into one round.

Shapes: shares have the shape of the secret they hold; payloads are flattened.

Section: chapter 14, "Sharing secrets".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..validation import check_int
from .comm import DEALER, Message, MPCError
from .cost import MAX_INPUT_DIMS, SHAPE_HEADER_WORDS
from .prg import PRG, insecure_prg
from .ring import check_frac_bits, decode, encode
from .sharing import share

if TYPE_CHECKING:  # annotations only: the engine never imports the value type at run time
    from .shared import Shared

__all__ = ["Party"]

Shape = tuple[int, ...]


def _shape_header(shape: Shape) -> torch.Tensor:
    """The fixed-size header announcing an input's shape: ``[ndim, d_0, ..., d_{ndim-1}, 0, ...]``."""
    return torch.tensor([len(shape), *shape] + [0] * (MAX_INPUT_DIMS - len(shape)), dtype=torch.int64)


def _header_shape(header: torch.Tensor) -> Shape:
    """Inverse of :func:`_shape_header` (a malformed header reads as ``(-1,)``)."""
    words = header.tolist()
    ndim = words[0]
    return tuple(words[1:1 + ndim]) if 0 <= ndim <= MAX_INPUT_DIMS else (-1,)


def _as_shape(name: str, shape: object) -> Shape:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise TypeError(f"{name} must be a shape (tuple of non-negative ints), got {shape!r}")
    return tuple(shape)


class Party:
    """One party's view of a secure computation (the ``ctx`` a program receives).

    Args:
        rank: 0 or 1 (computing parties) or 2 (the dealer).
        transport: a :class:`~labkit.mpc.comm.ThreadTransport` or ``DistTransport``.
        frac_bits: fixed-point fractional bits ``f`` of this run.
        session: identifier of the run; shares of different runs cannot be mixed.
        insecure_seed: ``None`` (default): this party's generator is seeded from the OS here,
            privately. An int: derive it from that public number and the rank
            (:func:`~labkit.mpc.prg.insecure_prg`), so every party can replay every other.
        private: this party's private input (whatever the run was given for it), or ``None``.
        keep_payloads: keep a copy of every sent and received payload (debug/leak tests).
        audit_truncation: keep this party's share of every value before it is truncated, so
            that the simulator can compute each truncation's failure probability (analysis
            only: it needs both parties' shares in one place).

    Attributes:
        rank, frac_bits, session, private, generator (this party's PRG), secure (whether the
        generator is private), messages (sent by this party), received (``(sender, payload)``
        pairs, kept only with ``keep_payloads``), audit (the shares before truncation, or
        ``None`` unless ``audit_truncation``).
    """

    value_type: ClassVar[type | None] = None  # the shared-value class (registered by labkit.mpc.shared)

    def __init__(self, rank: int, transport: Any, *, frac_bits: int, session: str,
                 insecure_seed: int | None = None, private: Any = None, keep_payloads: bool = False,
                 audit_truncation: bool = False) -> None:
        self.rank = check_int("rank", rank, 0, DEALER)
        self.transport = transport
        self.frac_bits = check_frac_bits(frac_bits)
        self.session = session
        self.private = private
        self.keep_payloads = bool(keep_payloads)
        self.audit: list[torch.Tensor] | None = [] if audit_truncation else None
        self.secure = insecure_seed is None
        self.generator: PRG = PRG.from_os() if self.secure else insecure_prg(insecure_seed, self.rank)
        self.messages: list[Message] = []
        self.received: list[tuple[int, torch.Tensor]] = []
        self.rounds = 0  # online rounds this party took part in
        self._dealer_sends = 0
        self._scope: list[str] = []

    @classmethod
    def register_value_type(cls, value_type: type) -> type:
        """Class decorator: the shared-value type that :meth:`input` builds and protocols accept.

        Its constructor takes ``(ctx, share, frac_bits)``.
        """
        cls.value_type = value_type
        return value_type

    def _wrap(self, share_: torch.Tensor, frac_bits: int) -> Shared:
        if Party.value_type is None:
            raise MPCError("no shared-value type registered (import labkit.mpc)")
        return Party.value_type(self, share_, frac_bits)

    def _check_value(self, what: str, value: object) -> None:
        if Party.value_type is None or not isinstance(value, Party.value_type):
            raise TypeError(f"{what} takes Shared values, got {type(value).__name__}")
        self.check_owns(value)

    # ----- identity -------------------------------------------------------------------
    @property
    def is_dealer(self) -> bool:
        """Whether this party is the dealer P2 (it holds shapes, not shares)."""
        return self.rank == DEALER

    @property
    def peer(self) -> int:
        """The other computing party (``1 - rank``); undefined for the dealer."""
        if self.is_dealer:
            raise MPCError("the dealer has no computing peer")
        return 1 - self.rank

    def __repr__(self) -> str:
        return f"Party(rank={self.rank}, session={self.session!r}, frac_bits={self.frac_bits})"

    # ----- labels ---------------------------------------------------------------------
    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Label the messages sent inside the block: their ``scope`` becomes ``outer/name``.

        ``run.log.cost(scope="name")`` then measures the block (prefix match on the path).
        A scope directly inside one of the same name adds nothing (``mul`` inside ``mul``
        stays ``mul``).
        """
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"scope name must be a non-empty string without '/', got {name!r}")
        pushed = not (self._scope and self._scope[-1] == name)
        if pushed:
            self._scope.append(name)
        try:
            yield
        finally:
            if pushed:
                self._scope.pop()

    @property
    def scope_path(self) -> str:
        """The current label path, ``""`` at the top level."""
        return "/".join(self._scope)

    # ----- sending --------------------------------------------------------------------
    def _send(self, dst: int, kind: str, payload: torch.Tensor, *, phase: str, round_: int,
              header: torch.Tensor | None = None) -> None:
        """Send one message (logged once); a ``header`` travels as its own fixed-size frame first."""
        flat = payload.reshape(-1)
        if header is not None:
            self.transport.send(dst, header)
            flat = torch.cat([header, flat])
        self.transport.send(dst, flat[0 if header is None else header.numel():])
        self.messages.append(Message(
            sender=self.rank, receiver=dst, kind=kind, nbytes=flat.numel() * 8, round=round_, phase=phase,
            scope=self.scope_path or kind, payload=flat.clone() if self.keep_payloads else None))

    def _recv(self, src: int, shapes: Sequence[Shape]) -> list[torch.Tensor]:
        sizes = [math.prod(s) for s in shapes]
        flat = self.transport.recv(src, sum(sizes))
        if self.keep_payloads:
            self.received.append((src, flat.clone()))
        return [t.reshape(s) for t, s in zip(flat.split(sizes), shapes)]

    def placeholders(self, shapes: Sequence[Shape]) -> list[torch.Tensor]:
        """Zeros of the given shapes: what the dealer holds where the parties hold shares.

        (Why not ``meta`` tensors: their first use imports ``torch._dynamo``, seconds in
        every fresh process.)
        """
        return [torch.zeros(s, dtype=torch.int64) for s in shapes]

    def exchange(self, tensors: Sequence[torch.Tensor], *, kind: str = "open") -> list[torch.Tensor]:
        """One online round: P0 and P1 each send ``tensors`` to the other and get the peer's.

        All tensors travel as one message. The dealer takes no part (it gets zero
        placeholders of the same shapes back).

        Returns:
            The peer's tensors, same shapes as ``tensors``.
        """
        shapes = [tuple(t.shape) for t in tensors]
        if self.is_dealer:
            return self.placeholders(shapes)
        flat = torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.empty(0, dtype=torch.int64)
        self._send(self.peer, kind, flat, phase="online", round_=self.rounds)
        theirs = self._recv(self.peer, shapes)
        self.rounds += 1
        return theirs

    def open(self, *values: Shared) -> list[torch.Tensor]:
        """Reconstruct shared values at both computing parties in one round (ring elements).

        Use only on *masked* values (e.g. ``x - a`` for a dealer-random ``a``): the result
        is public. For outputs use :meth:`reveal`.
        """
        for v in values:
            self._check_value("open", v)
        theirs = self.exchange([v.share for v in values], kind="open")
        return [v.share + t for v, t in zip(values, theirs)]

    def open_shares(self, *shares: torch.Tensor) -> list[torch.Tensor]:
        """Reconstruct additively shared tensors (this party's raw int64 shares) in one round.

        The building block of every protocol: open only values masked by dealer randomness.
        """
        theirs = self.exchange(list(shares), kind="open")
        return [s + t for s, t in zip(shares, theirs)]

    def open_xor(self, *words: torch.Tensor) -> list[torch.Tensor]:
        """Reconstruct XOR-shared words (this party's raw shares) in one round."""
        theirs = self.exchange(list(words), kind="open")
        return [w ^ t for w, t in zip(words, theirs)]

    def correlated(self, make: Callable[..., tuple[list[torch.Tensor], list[torch.Tensor]]],
                   shapes: Sequence[Shape]) -> list[torch.Tensor]:
        """Correlated randomness from the dealer: this party's pieces.

        At the dealer, ``make(generator=dealer_generator)`` returns ``(pieces for P0, pieces
        for P1)`` (see :mod:`labkit.mpc.dealer`); each party's pieces go out as one message
        of kind ``"dealer"``. At P0/P1 the message is received and split into ``shapes``.

        Args:
            make: a generator of pieces taking a keyword ``generator``.
            shapes: the shapes of the pieces, in order (every party knows them).

        Returns:
            This party's pieces (zero placeholders at the dealer).
        """
        shapes = [_as_shape("shapes[i]", s) for s in shapes]
        if not self.is_dealer:
            return self._recv(DEALER, shapes)
        p0, p1 = make(generator=self.generator)
        for pieces in (p0, p1):
            got = [tuple(t.shape) for t in pieces]
            if got != shapes:
                raise MPCError(f"dealer: pieces have shapes {got}, the protocol declared {shapes}")
        for dst, pieces in ((0, p0), (1, p1)):
            self._send(dst, "dealer", torch.cat([t.reshape(-1) for t in pieces]), phase="dealer",
                       round_=self._dealer_sends)
        self._dealer_sends += 1
        return self.placeholders(shapes)

    # ----- inputs and outputs -----------------------------------------------------------
    def input(self, owner: int, value: Any = None, *, shape: Shape | None = None,
              frac_bits: int | None = None) -> Shared:
        """Secret-share a private tensor of party ``owner`` (one message: owner -> peer).

        The owner encodes ``value`` in fixed point (``frac_bits``, default the run's ``f``;
        ``0`` for integers), draws a uniform share ``r`` with its private generator, keeps
        ``x - r`` and sends ``r``, preceded by a header with its shape
        (:data:`SHAPE_HEADER_WORDS` words: the rank, then the sizes, zero-padded). The receiver
        checks that header against its own ``shape``. Every party calls this line; only the
        owner reads ``value``.

        Args:
            owner: 0 or 1 (the dealer never has inputs).
            value: the owner's plaintext (tensor or number); ignored at other parties.
            shape: the input's shape (at most :data:`MAX_INPUT_DIMS` dimensions); required at
                the non-owners, checked at the owner.
            frac_bits: ``self.frac_bits`` (fixed point) or 0 (integers).

        Returns:
            This party's :class:`~labkit.mpc.shared.Shared` of the input.

        Raises:
            MPCError: at the receiver, when the owner's shape differs from the declared one.
        """
        owner = check_int("owner", owner, 0, 1)
        fb = self.frac_bits if frac_bits is None else check_int("frac_bits", frac_bits, 0, self.frac_bits)
        if fb not in (0, self.frac_bits):
            raise ValueError(f"input: frac_bits must be 0 (integer) or the run's {self.frac_bits}, got {fb}")
        want = None if shape is None else _as_shape("shape", shape)
        if want is not None and len(want) > MAX_INPUT_DIMS:
            raise ValueError(f"input: shape may have at most {MAX_INPUT_DIMS} dimensions, got {want}")
        with self.scope("input"):
            if self.rank == owner:
                if isinstance(value, bool) or not isinstance(value, (torch.Tensor, int, float)):
                    raise TypeError(f"input: party {owner} must pass its value as a tensor or number, "
                                    f"got {type(value).__name__}")
                plain = torch.as_tensor(value)
                if plain.is_complex() or plain.dtype == torch.bool:
                    raise TypeError(f"input: value must be a real tensor, got dtype {plain.dtype}")
                if want is not None and tuple(plain.shape) != want:
                    raise ValueError(f"input: value has shape {tuple(plain.shape)} but shape={want}")
                if fb == 0 and plain.is_floating_point() and not bool((plain == plain.round()).all()):
                    raise ValueError("input: frac_bits=0 (integer input) but the value has fractional parts")
                if plain.dim() > MAX_INPUT_DIMS:
                    raise ValueError(f"input: value may have at most {MAX_INPUT_DIMS} dimensions, "
                                     f"got shape {tuple(plain.shape)}")
                ring = encode(plain.to(torch.float64), fb) if fb > 0 else plain.to(torch.int64)
                mine, sent = share(ring, n_parties=2, generator=self.generator)
                self._send(self.peer, "input", sent, phase="online", round_=self.rounds,
                           header=_shape_header(tuple(plain.shape)))
                self.rounds += 1
                return self._wrap(mine, fb)
            if want is None:
                raise ValueError(f"input: party {self.rank} does not own this input and needs shape=...")
            if self.is_dealer:
                return self._wrap(torch.zeros(want, dtype=torch.int64), fb)
            (header,) = self._recv(owner, [(SHAPE_HEADER_WORDS,)])
            declared = _header_shape(header)
            if declared != want:
                raise MPCError(f"input: party {owner} shares a value of shape {declared}, but party {self.rank} "
                               f"declared shape={want} for it (the parties must agree on every input's shape)")
            (got,) = self._recv(owner, [want])
            self.rounds += 1
            return self._wrap(got, fb)

    def reveal(self, x: Shared, *, to: int | None = None) -> torch.Tensor | None:
        """Open ``x`` to both computing parties (``to=None``) or to one (``to=0`` or ``1``).

        Returns:
            At a recipient: the decoded plaintext (float64 for fixed point, int64 for
            integers). Elsewhere (the other party, the dealer): ``None``.
        """
        self._check_value("reveal", x)
        if to is not None:
            to = check_int("to", to, 0, 1)
        if self.is_dealer:
            return None
        with self.scope("reveal"):
            if to is None:
                (theirs,) = self.exchange([x.share], kind="reveal")
            elif self.rank == to:
                (theirs,) = self._recv(self.peer, [tuple(x.shape)])
                self.rounds += 1
            else:
                self._send(to, "reveal", x.share, phase="online", round_=self.rounds)
                self.rounds += 1
                return None
        ring = x.share + theirs
        return decode(ring, x.frac_bits) if x.frac_bits > 0 else ring

    # ----- helpers for protocols ----------------------------------------------------------
    def check_owns(self, x: Shared) -> None:
        """Raise unless ``x`` belongs to this party's session."""
        if x.ctx is not self:
            raise ValueError(f"mixing shares from different sessions or parties: the value belongs to "
                             f"session {x.ctx.session!r} (party {x.ctx.rank}), this is session "
                             f"{self.session!r} (party {self.rank})")

    def public(self, value: torch.Tensor) -> torch.Tensor:
        """A public tensor ready to combine with this party's shares (kept for protocols
        written against a device-placing engine; on CPU it is the tensor itself)."""
        return value
