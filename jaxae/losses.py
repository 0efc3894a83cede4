"""Loss primitives: pure functions of arrays, one value per example summed over features.

Arrays are positional, hyperparameters keyword-only; reductions over the batch happen in
`jaxae.objective`. Element-wise losses come from optax, except the cross-entropy from logits (`sigmoid_bce`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def squared_error(recon: jax.Array, x: jax.Array) -> jax.Array:
  """Sum of squared errors over features.

  Args:
    recon: [B, D] reconstruction.
    x: [B, D] target.

  Returns:
    [B] sum_d (recon_d - x_d)^2.
  """
  return jnp.sum(optax.losses.squared_error(recon, x), axis=-1)


def mean_squared_error(recon: jax.Array, x: jax.Array) -> jax.Array:
  """Mean of squared errors over features, as PyTorch's MSELoss and Keras report it.

  Returns:
    [B] mean_d (recon_d - x_d)^2.
  """
  return jnp.mean(optax.losses.squared_error(recon, x), axis=-1)


@jax.custom_jvp
def sigmoid_bce(logits: jax.Array, x: jax.Array) -> jax.Array:
  """Element-wise binary cross-entropy of targets x in [0, 1] against sigmoid(logits), exact for any logit.

  max(l, 0) - x l + log1p(exp(-|l|)): one exp and one log1p per element, where optax's form evaluates two
  log-sigmoids (faster; docs/devices.md has the timing). The
  derivative is given, not traced through max and abs (whose autodiff at l = 0 says 0 - x instead of
  1/2 - x): d/dl = sigmoid(l) - x, formed as 1 - x - sigmoid(-l) for l >= 0 so that it keeps its digits
  when sigmoid(l) and x are both near 1; d/dx = -l.
  """
  return _bce_from(logits, x, jnp.exp(-jnp.abs(logits)))


def _bce_from(logits: jax.Array, x: jax.Array, e: jax.Array) -> jax.Array:
  """The cross-entropy's value given e = exp(-|logits|) (shared with its derivative)."""
  return jnp.maximum(logits, 0) - x * logits + jnp.log1p(e)


@sigmoid_bce.defjvp
def _sigmoid_bce_jvp(primals, tangents):
  logits, x = primals
  d_logits, d_x = tangents
  e = jnp.exp(-jnp.abs(logits))
  value = _bce_from(logits, x, e)
  small = e / (1 + e)  # sigmoid(-|l|), accurate however large |l| is
  grad = jnp.where(logits >= 0, (1 - x) - small, small - x)
  return value, grad * d_logits - logits * d_x


def bce_with_logits(logits: jax.Array, x: jax.Array) -> jax.Array:
  """Binary cross-entropy of targets in [0, 1] against sigmoid(logits), summed over features.

  Computed from the logits (`sigmoid_bce`), stable for any logit size.

  Args:
    logits: [B, D] pre-sigmoid decoder output.
    x: [B, D] targets in [0, 1] (need not be binary).

  Returns:
    [B] -sum_d x_d log sigmoid(l_d) + (1 - x_d) log(1 - sigmoid(l_d)).
  """
  return jnp.sum(sigmoid_bce(logits, x), axis=-1)


def mean_bce_with_logits(logits: jax.Array, x: jax.Array) -> jax.Array:
  """Binary cross-entropy averaged over features: the per-pixel value Keras reports.

  Returns:
    [B] bce_with_logits(logits, x) / D.
  """
  return jnp.mean(sigmoid_bce(logits, x), axis=-1)


# Contractive penalties: ||dh/dx||_F^2 of the code h = encode(x) of ONE example, vmapped over the batch.
# `encode` maps one example (any shape) to its code (any shape); Jacobians are taken of that map.
def l1_activity(h: jax.Array) -> jax.Array:
  """L1 activity penalty of the code (S2's Omega(h) = sum_i |h_i|; Keras' activity_regularizer).

  Args:
    h: [B, K] code activations.

  Returns:
    [B] sum_k |h_k|.
  """
  return jnp.sum(jnp.abs(h), axis=-1)


def kl_sparsity(h: jax.Array, *, rho: float, eps: float = 1e-6) -> jax.Array:
  """KL sparsity penalty of a batch of sigmoid codes (Ng, CS294A notes, "Sparse autoencoder", sec. 2.3).

  rho_hat_j is unit j's mean activation over the batch, clipped to [eps, 1 - eps] so that a unit stuck
  at 0 or 1 gives a large finite value, not inf.

  Args:
    h: [B, K] code activations in [0, 1] (sigmoid units).
    rho: target mean activation, in (0, 1) (Ng uses 0.05).

  Returns:
    scalar sum_j rho log(rho / rho_hat_j) + (1 - rho) log((1 - rho) / (1 - rho_hat_j)).
  """
  rho_hat = jnp.clip(jnp.mean(h, axis=0), eps, 1.0 - eps)
  return jnp.sum(rho * jnp.log(rho / rho_hat) + (1.0 - rho) * jnp.log((1.0 - rho) / (1.0 - rho_hat)))


def gaussian_kl(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, diag exp(logvar)) || N(0, I)) of a VAE's posterior (Kingma & Welling 2014, appendix B).

  Args:
    mu, logvar: [B, L] mean and log-variance of q(z | x).

  Returns:
    [B] -0.5 * sum_l (1 + logvar_l - mu_l^2 - exp(logvar_l)).
  """
  return -0.5 * jnp.sum(1.0 + logvar - mu ** 2 - jnp.exp(logvar), axis=-1)


def kernels_sq_norm(params) -> jax.Array:
  """Sum of squares of every kernel (weight matrix or conv filter) in a parameter tree, biases left out.

  A parameter counts as a kernel when its name contains "kernel" (flax's Dense and Conv, TiedAE).

  Returns:
    scalar sum over kernels of sum_ij W_ij^2.
  """
  leaves = jax.tree_util.tree_leaves_with_path(params)
  sq = [jnp.sum(w ** 2) for path, w in leaves if "kernel" in jax.tree_util.keystr(path)]
  return sum(sq) if sq else jnp.zeros(())


JACOBIAN_MODES = ("jacfwd", "jacrev", "auto")


def jacobian_mode(fn, example: jax.Array, mode: str = "auto", *, differentiated: bool = True,
                  split: bool = False) -> str:
  """The autodiff mode that `mode` stands for; with "auto", the cheapest exact one (`choose_mode`)."""
  if mode not in JACOBIAN_MODES:
    raise ValueError(f"Unknown Jacobian mode {mode!r}; known: {', '.join(JACOBIAN_MODES)}.")
  return mode if mode != "auto" else choose_mode(fn, example, differentiated=differentiated, split=split)[0]


def choose_mode(fn, example: jax.Array, *, differentiated: bool = True, split: bool = False) -> tuple[str, str]:
  """The one place "auto" is decided: (mode, why) for the exact Jacobian of fn at one example.

  D is the size of the input, K of the output. For the Jacobian alone, forward mode costs ~D passes and
  reverse mode ~K, so jacrev when K < D. Inside a training loss (`differentiated`) the Jacobian is
  differentiated once more, and reverse-over-forward is far cheaper than reverse-over-reverse, so jacrev
  only when K <= D / 16. `split`: fn is an encoder that splits after a dense first layer (EncoderSplit with
  a kernel): "factored" then beats both in a loss (docs/contractive.md has the measurements).
  """
  if split and differentiated:
    return "factored", "the model splits its encoder after a dense first layer (split_encoder)"
  d, k = example.size, int(np.prod(jax.eval_shape(fn, example).shape))
  if (16 * k <= d) if differentiated else (k < d):
    return "jacrev", f"{k} outputs against {d} inputs" + (" (K <= D/16)" if differentiated else "")
  return "jacfwd", f"{k} outputs against {d} inputs" + (" (K > D/16 in a loss)" if differentiated else "")


def _per_example(fn, *xs, examples_per_pass: int = 0):
  """fn over the leading axis: all at once (vmap), or `examples_per_pass` at a time to bound memory.

  The n = `examples_per_pass` examples of one pass are spread over the batch, not taken side by side: [B]
  is laid out row-major as [n, B/n] and the scan runs over the second axis, so pass s takes examples
  s, s + B/n, s + 2 B/n, ... When the batch is split over a mesh's devices (jaxae.parallel) and the device
  count divides n, every device keeps its own examples and computes n / count of them per pass, with no
  gather of the batch; without a mesh it is the same computation. A batch that n does not divide is padded
  with copies of its first examples, whose values are dropped. Each pass is rematerialised (jax.checkpoint):
  differentiated, the scan keeps only its inputs and recomputes a pass's Jacobians in the backward pass, so that
  memory follows n and not the batch (without it, the scan kept every pass's residuals: 705 of the whole batch's
  984 MiB for S6 under jacfwd at batch 128, where it is now 128; experiments/bench_memory.py).
  """
  b, n = xs[0].shape[0], examples_per_pass
  if not n or n >= b:
    return jax.vmap(fn)(*xs)
  steps = -(-b // n)
  pad = n * steps - b
  padded = [jnp.concatenate([a, a[:pad]]) if pad else a for a in xs]
  by_step = [jnp.swapaxes(a.reshape(n, steps, *a.shape[1:]), 0, 1) for a in padded]  # [B/n, n, ...]
  out = jax.lax.map(jax.checkpoint(lambda a: jax.vmap(fn)(*a)), by_step)
  return jax.tree_util.tree_map(lambda o: jnp.swapaxes(o, 0, 1).reshape(n * steps, *o.shape[2:])[:b], out)


def jacobian(encode, x: jax.Array, *, mode: str = "auto", examples_per_pass: int = 0) -> jax.Array:
  """Exact encoder Jacobian dh/dx of each example.

  Args:
    encode: one example [*S] -> code [*K] (parameters bound).
    x: [B, *S] inputs.
    mode: "jacfwd", "jacrev" or "auto" (the cheaper for the Jacobian's value, `choose_mode`).
    examples_per_pass: as in `jacobian_sq_norm`.

  Returns:
    [B, K, *S], K the size of the (flattened) code.
  """
  jac = jax.jacfwd(encode) if jacobian_mode(encode, x[0], mode, differentiated=False) == "jacfwd" else jax.jacrev(encode)
  return _per_example(lambda xi: jac(xi).reshape(-1, *xi.shape), x, examples_per_pass=examples_per_pass)


def jacobian_sq_norm(encode, x: jax.Array, *, mode: str = "jacfwd", examples_per_pass: int = 0) -> jax.Array:
  """Exact squared Frobenius norm of the encoder Jacobian, per example.

  Args:
    encode: one example [*S] -> code [*K] (parameters bound).
    x: [B, *S] inputs.
    mode: "jacfwd" (forward mode, cost ~ D Jacobian-vector products), "jacrev" (reverse mode, ~ K
      vector-Jacobian products) or "auto" (the cheaper of the two in a training loss, `choose_mode`).
    examples_per_pass: 0 takes the whole batch at once (fastest); n > 0 takes n examples at a time,
      for encoders whose Jacobians (D tangents of every activation) would not fit in memory at once. On a
      mesh, a multiple of the device count keeps the batch split (n / count per device per pass, `_per_example`).

  Returns:
    [B] ||dh/dx||_F^2 = sum_jk (dh_j / dx_k)^2.

  References:
    Rifai et al., Contractive auto-encoders: explicit invariance during feature extraction, ICML 2011,
    eq. (2).
  """
  jac = jax.jacfwd(encode) if jacobian_mode(encode, x[0], mode) == "jacfwd" else jax.jacrev(encode)
  return _per_example(lambda xi: jnp.sum(jac(xi) ** 2), x, examples_per_pass=examples_per_pass)


def sigmoid_jacobian_sq_norm(h: jax.Array, kernel: jax.Array) -> jax.Array:
  """Closed form of ||dh/dx||_F^2 for one sigmoid layer h = sigmoid(x W + b).

  Args:
    h: [B, K] codes.
    kernel: [D, K] the layer's W.

  Returns:
    [B] sum_j (h_j (1 - h_j))^2 sum_i W_ij^2, since J = diag(h (1 - h)) W^T.
  """
  return jnp.sum((h * (1.0 - h)) ** 2 * jnp.sum(kernel ** 2, axis=0), axis=-1)


# The factored exact penalty. For h = rest(z1), z1 = first(x) affine (z1 = x W1 + b1 for a dense first layer),
# J = M A with M = d rest / d z1 [K, H1] and A = d z1 / d x [H1, D] (A = W1^T when dense), so
#   ||J||_F^2 = sum_k m_k^T G m_k,  G = A A^T = W1^T W1 [H1, H1], formed once per batch.
# Per example that costs M (min(K, H1) passes through `rest` alone) and K H1^2 for the quadratic form
# (undercomplete first layer, H1 <= D), or K H1 D for J = M W1^T itself (overcomplete, H1 > D).
# When `rest` is element-wise (one layer: an activation and nothing else), M is diagonal, one
# forward-mode pass with a tangent of ones gives its diagonal d, and ||J||_F^2 = sum_j d_j^2 ||W1[:, j]||^2:
# the closed form of Rifai et al., found from the encoder's structure (`is_elementwise`) rather than named.
# A convolutional first layer has H1 = H W C1 > D and no small G: J = M A is computed as K transposed
# convolutions of the rows of M, which is what jacrev does; the factored form buys nothing there.
_ELEMENTWISE = frozenset((
    "abs", "add", "convert_element_type", "copy", "cos", "div", "eq", "erf", "erf_inv", "exp", "exp2", "expm1",
    "ge", "gt", "integer_pow", "le", "log", "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "pow",
    "rsqrt", "select_n", "sign", "sin", "sqrt", "square", "sub", "tan", "tanh", "stop_gradient"))


def is_elementwise(fn, example: jax.Array) -> bool:
  """Whether fn maps `example` to an array of its shape through element-wise operations only, so that
  output j depends on input j alone and d fn / d example is diagonal.

  Read from fn's jaxpr: every operation (inside nested calls such as jit or custom_jvp too) must be one of
  the element-wise primitives, on arrays of example's shape or scalars; anything else (a matmul, a
  reduction, a reshape, a broadcast of a non-scalar) says no.
  """
  closed = jax.make_jaxpr(fn)(example)
  shape = tuple(example.shape)
  if tuple(closed.out_avals[0].shape) != shape or len(closed.out_avals) != 1:
    return False
  return _elementwise_jaxpr(closed.jaxpr, shape)


def _elementwise_jaxpr(jaxpr, shape) -> bool:
  for eqn in jaxpr.eqns:
    subs = [v for v in eqn.params.values() if hasattr(v, "eqns") or hasattr(v, "jaxpr")]
    avals = [getattr(v, "aval", None) for v in (*eqn.invars, *eqn.outvars)]
    if any(a is not None and getattr(a, "shape", ()) not in ((), shape) for a in avals):
      return False
    if subs:
      if not all(_elementwise_jaxpr(getattr(j, "jaxpr", j), shape) for j in subs):
        return False
    elif eqn.primitive.name == "broadcast_in_dim":
      if eqn.invars[0].aval.shape != ():
        return False
    elif eqn.primitive.name not in _ELEMENTWISE:
      return False
  return True


def factored_jacobian_sq_norm(first, rest, x: jax.Array, *, kernel: jax.Array | None = None,
                              inner_mode: str = "auto", batch_mean: bool = False,
                              z: jax.Array | None = None) -> jax.Array:
  """Exact ||dh/dx||_F^2 per example through the encoder's first affine layer (see the note above).

  Args:
    first: one example [*S] -> z1 [*Z], the first layer's pre-activation, affine in x.
    rest: z1 -> code [*K], the rest of the encoder.
    x: [B, *S] inputs.
    kernel: W1 [D, H1] when z1 = x.reshape(D) W1 + b1 (a dense first layer), else None (any affine
      first layer, e.g. a convolution: its transpose is applied by reverse mode).
    inner_mode: how M = d rest / d z1 is computed: "jacfwd", "jacrev" or "auto" (`choose_mode` for M's value:
      jacrev when K < H1).
    z: [B, *Z] first(x) when the caller has it already (the model's forward pass): reusing it makes the
      gradient through the first layer one product for the loss and the penalty together.
    batch_mean: return the batch mean only, as tr(S G) with S = sum_b M_b^T M_b: one H1 x H1 product for the
      whole batch instead of one per example in the gradient.

  Returns:
    [B] ||dh/dx||_F^2 (a scalar, their mean, with batch_mean), equal to `jacobian_sq_norm` up to rounding.
  """
  z = jax.vmap(first)(x) if z is None else z
  if kernel is not None and is_elementwise(rest, z[0]):
    return _sq_norm_through_first(_inner_diagonals(rest, z), kernel, mean=batch_mean)
  return _sq_norm_through_first(_inner_jacobians(rest, z, inner_mode), kernel, first, x[0], mean=batch_mean)


def _inner_diagonals(rest, z: jax.Array) -> jax.Array:
  """[N, *Z] -> [N, H1]: the diagonal of M = d rest / d z1 at each z, for an element-wise `rest` (one JVP)."""
  return jax.vmap(lambda zi: jax.jvp(rest, (zi,), (jnp.ones_like(zi),))[1].reshape(-1))(z)


def _inner_jacobians(rest, z: jax.Array, inner_mode: str) -> jax.Array:
  """[N, *Z] -> [N, K, H1]: M = d rest / d z1 at each z, by `inner_mode` (see factored_jacobian_sq_norm)."""
  mode = jacobian_mode(rest, z[0], inner_mode, differentiated=False)
  jac = jax.jacfwd(rest) if mode == "jacfwd" else jax.jacrev(rest)
  return jax.vmap(lambda zi: jac(zi).reshape(-1, zi.size))(z)


def _sq_norm_through_first(m: jax.Array, kernel: jax.Array | None, first=None, example: jax.Array | None = None,
                           *, mean: bool = False) -> jax.Array:
  """||M_n A||_F^2 for each of N matrices M_n, A = d first / dx (W1^T for a dense first layer).

  Args:
    m: [N, H1], the diagonals of diagonal M_n (needs `kernel`: sum_j m_j^2 ||W1[:, j]||^2), or
      [N, K, H1], the M_n themselves.
    kernel: W1 [D, H1], or None: each row of M_n then goes through first's transpose (reverse mode).
    first, example: the first layer and one input [*S], needed when kernel is None.
    mean: return the mean over N only (undercomplete W1: tr(S G), S = sum_n M_n^T M_n, one H1 x H1 product).

  Returns:
    [N] (a scalar with mean). Undercomplete W1 (H1 <= D): the quadratic form sum_k m_k^T G m_k, G = W1^T W1;
    overcomplete: ||M_n W1^T||_F^2 itself (see the note above factored_jacobian_sq_norm).
  """
  if m.ndim == 2:
    norms = jnp.sum(m ** 2 * jnp.sum(kernel ** 2, axis=0), axis=-1)
  elif kernel is None:
    _, vjp = jax.vjp(first, example)
    z_shape = jax.eval_shape(first, example).shape
    j = jax.vmap(jax.vmap(lambda row: vjp(row.reshape(z_shape))[0]))(m)
    norms = jnp.sum(j.reshape(len(m), -1) ** 2, axis=-1)
  elif kernel.shape[1] > kernel.shape[0]:  # overcomplete first layer: J = M W1^T itself
    norms = jnp.sum((m @ kernel.T) ** 2, axis=(1, 2))
  elif mean:  # undercomplete, the mean: tr(S G)
    flat = m.reshape(-1, m.shape[-1])
    return jnp.sum((flat.T @ flat) * (kernel.T @ kernel)) / len(m)
  else:
    norms = jnp.einsum("nkh,nkh->n", m @ (kernel.T @ kernel), m)
  return jnp.mean(norms) if mean else norms


def projected_jacobian_sq_norm(key: jax.Array, encode, x: jax.Array, *, num_projections: int) -> jax.Array:
  """Unbiased estimate of ||dh/dx||_F^2 from random projections: E ||J v||^2 = ||J||_F^2, v ~ N(0, I).

  Costs `num_projections` Jacobian-vector products per example instead of the whole Jacobian.

  Args:
    key: PRNG key for the projections.
    encode: one example [*S] -> code [*K].
    x: [B, *S] inputs.
    num_projections: k, the number of directions per example; the variance falls as 1/k.

  Returns:
    [B] mean over k draws of ||J v||^2.
  """
  v = jax.random.normal(key, (x.shape[0], num_projections) + x.shape[1:], x.dtype)

  def one(xi, vi):
    jv = jax.vmap(lambda d: jax.jvp(encode, (xi,), (d,))[1])(vi)
    return jnp.mean(jnp.sum(jv.reshape(num_projections, -1) ** 2, axis=-1))
  return jax.vmap(one)(x, v)


def jacobian_difference_sq_norm(key: jax.Array, encode, x: jax.Array, *, sigma: float, num_copies: int,
                                mode: str = "jacfwd") -> jax.Array:
  """The higher-order term of CAE+H: E ||J(x) - J(x + eps)||_F^2, eps ~ N(0, sigma^2 I).

  Args:
    key: PRNG key for the corruption.
    encode: one example [*S] -> code [*K].
    x: [B, *S] inputs.
    sigma: standard deviation of the Gaussian corruption.
    num_copies: corrupted copies per example the expectation is averaged over.
    mode: how each Jacobian is computed (see `jacobian_sq_norm`).

  Returns:
    [B] mean over copies of ||J(x) - J(x + eps)||_F^2.

  References:
    Rifai et al., Higher order contractive auto-encoder, ECML PKDD 2011, eq. (5).
  """
  jac = jax.jacfwd(encode) if jacobian_mode(encode, x[0], mode) == "jacfwd" else jax.jacrev(encode)
  eps = sigma * jax.random.normal(key, (x.shape[0], num_copies) + x.shape[1:], x.dtype)

  def one(xi, ei):
    j0 = jac(xi)
    return jnp.mean(jax.vmap(lambda e: jnp.sum((j0 - jac(xi + e)) ** 2))(ei))
  return jax.vmap(one)(x, eps)


def factored_jacobian_difference_sq_norm(key: jax.Array, first, rest, x: jax.Array, *, sigma: float,
                                         num_copies: int, kernel: jax.Array | None = None,
                                         inner_mode: str = "auto", batch_mean: bool = False,
                                         z: jax.Array | None = None) -> jax.Array:
  """CAE+H's higher-order term through the encoder's first affine layer, no Jacobian of that layer formed.

  With z1 = first(x) = x W1 + b1 and M = d rest / d z1, J(x) - J(x + eps) = (M(z1) - M(z1 + eps W1)) W1^T:
  first() runs once per example (the copies are z1 + eps W1), each copy costs one M (min(K, H1) passes
  through `rest`; a single JVP when `rest` is element-wise, M then diagonal) and one ||. W1^T||_F^2 as in
  `factored_jacobian_sq_norm`: about one factored CAE penalty per copy, where `jacobian_difference_sq_norm`
  forms num_copies + 1 Jacobians of the whole encoder (D passes each).

  Args:
    key: PRNG key for the corruption; eps is drawn as in `jacobian_difference_sq_norm`, so both give the
      same value for the same key.
    first, rest, x, kernel, inner_mode: as in `factored_jacobian_sq_norm` (kernel None: a convolutional first
      layer, applied again to each corrupted copy).
    sigma: standard deviation of the Gaussian corruption.
    num_copies: corrupted copies per example the expectation is averaged over.
    batch_mean: return the mean over the batch only (in a loss: the undercomplete route's tr(S G) form).
    z: [B, *Z] first(x) when the caller has it already.

  Returns:
    [B] mean over copies of ||J(x) - J(x + eps)||_F^2, equal to `jacobian_difference_sq_norm` up to rounding
    (a scalar, their mean, with batch_mean).

  References:
    Rifai et al., Higher order contractive auto-encoder, ECML PKDD 2011, eq. (5).
  """
  b, c = x.shape[0], num_copies
  eps = sigma * jax.random.normal(key, (b, c) + x.shape[1:], x.dtype)
  z = jax.vmap(first)(x) if z is None else z
  if kernel is not None:
    z_copies = (z[:, None] + (eps.reshape(b, c, -1) @ kernel).reshape(b, c, *z.shape[1:])).reshape(-1, *z.shape[1:])
  else:
    z_copies = jax.vmap(first)((x[:, None] + eps).reshape(-1, *x.shape[1:]))
  if kernel is not None and is_elementwise(rest, z[0]):
    m, m_copies = _inner_diagonals(rest, z), _inner_diagonals(rest, z_copies)
  else:
    m, m_copies = _inner_jacobians(rest, z, inner_mode), _inner_jacobians(rest, z_copies, inner_mode)
  diff = (m[:, None] - m_copies.reshape(b, c, *m.shape[1:])).reshape(b * c, *m.shape[1:])
  if batch_mean:
    return _sq_norm_through_first(diff, kernel, first, x[0], mean=True)
  return jnp.mean(_sq_norm_through_first(diff, kernel, first, x[0]).reshape(b, c), axis=1)
