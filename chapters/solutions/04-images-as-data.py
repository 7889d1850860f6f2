"""Solutions to the exercises of chapter 4, Images as data (chapters/04-images-as-data.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("4.1")` runs section "Solution 4.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 4.1
bpd = 4.85
nats = bpd * 784 * math.log(2)                            # -log P(x)
paper_units = 784 * math.log(256) - nats                  # log p(y) = log P(x) + 784 ln 256
print(f"(a) {nats:.1f} nats per digit   (b) {paper_units:.1f} nats in NICE's units")
print(f"(c) NICE better by {1980.50 - paper_units:.1f} nats = {bpd - unit_interval_nats_to_bits_per_dim(1980.50, 784):.3f} bits/dim")
print(f"(d) {bpd * 196 * math.log(2):.1f} nats per 14 x 14 digit")
assert abs(bits_per_dim(-nats, 784) - bpd) < 1e-12
assert abs(bits_per_dim_to_unit_interval_nats(bpd, 784) - paper_units) < 1e-9


# %% Solution 4.2
alpha = 0.05
low, high = math.log(4 * (1 - 2 * alpha)), math.log((1 - 2 * alpha) / (alpha * (1 - alpha)))
print(f"one pixel: from {low:.3f} nats = {low / math.log(2):.3f} bits (y = 1/2) "
      f"to {high:.3f} nats = {high / math.log(2):.3f} bits (y = 0 or 1)")
layer = Logit(alpha)
assert math.isclose(layer(torch.tensor([[0.5]], dtype=torch.float64))[1].item(), low)
assert math.isclose(layer(torch.tensor([[0.0]], dtype=torch.float64))[1].item(), high)

y = torch.rand(5, 8, dtype=torch.float64, requires_grad=True)
z, log_det = layer(y)
dz_dy, = torch.autograd.grad(z.sum(), y)                  # the diagonal of the (diagonal) Jacobian
p = alpha + (1 - 2 * alpha) * y.detach()
assert torch.allclose(dz_dy, (1 - 2 * alpha) / (p * (1 - p)))
assert torch.allclose(log_det, dz_dy.log().sum(1))
z = z.detach()
inverse_by_hand = (-torch.nn.functional.softplus(-z) - torch.nn.functional.softplus(z) - math.log(1 - 2 * alpha)).sum(1)
assert torch.allclose(layer.inverse(z)[1], inverse_by_hand) and torch.allclose(inverse_by_hand, -log_det.detach())
print("derivative, forward and inverse log-dets agree with the formulas")


# %% Solution 4.3
normal = torch.distributions.Normal(0.0, 1.0)
seed_everything(0)
for L in (4, 256):
    toy = FlowModel(Sequential(Dequantize(L), Logit(0.05)), "normal", (1,)).double()   # log_prob: one draw of u
    density = FlowModel(Logit(0.05), "normal", (1,)).double()                          # log p(y) on [0, 1]
    levels = torch.arange(L, dtype=torch.float64)[:, None]
    edges, _ = Logit(0.05)(torch.linspace(0, 1, L + 1, dtype=torch.float64)[:, None])  # z_0, ..., z_L
    log_P = (normal.cdf(edges[1:, 0]) - normal.cdf(edges[:-1, 0])).log()                # exact log P(x)
    u = (torch.arange(2000, dtype=torch.float64) + 0.5) / 2000                           # midpoint rule in u
    with torch.no_grad():
        draws = torch.stack([toy.log_prob(levels) for _ in range(2000)])                # 2000 dequantization draws
        bound = density.log_prob(((levels + u) / L).reshape(-1, 1)).view(L, -1).mean(1) - math.log(L)
    average, stderr = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    gap = log_P - bound
    assert (gap >= 0).all() and ((average - bound).abs() < 4 * stderr).all()
    print(f"L = {L}: sum of P(x) = {log_P.exp().sum().item():.4f}, gap log P(x) - bound from {gap.min().item():.1e} "
          f"to {gap.max().item():.4f} nats; model average within {(average - bound).abs().max().item():.4f} of the bound")
    if L == 4:
        for k in range(L):
            print(f"   x = {k}: log P(x) = {log_P[k].item():7.4f}   bound {bound[k].item():7.4f}   "
                  f"model average {average[k].item():7.4f} (+- {stderr[k].item():.4f})")


# %% Solution 4.4
import copy
from flowlib import jacobian

check = copy.deepcopy(model_a).double()                   # a float64 copy: the trained model stays as it was
seed_everything(3)
y, _ = check.flow[0](test14[:4])                          # dequantized digits, float64
after = check.flow[1:]                                    # Logit(0.05) and the six couplings
with torch.no_grad():
    _, log_det = after(y)
    _, logit_part = check.flow[1](y)
by_autograd = flow_log_abs_det(after, y)                  # slogdet of the 196 x 196 Jacobian of every digit
for a, b, c in zip(log_det.tolist(), by_autograd.tolist(), logit_part.tolist()):
    print(f"flow: {a:9.3f}   autograd: {b:9.3f}   of which the logit: {c:9.3f}")
assert torch.allclose(log_det, by_autograd)

u = torch.rand(1, D14, dtype=torch.float64)               # one fixed noise draw
J = jacobian(lambda x: (x + u) / 256, test14[:1].double())
print(f"fixed u: J = I / 256: {torch.allclose(J[0], torch.eye(D14, dtype=torch.float64) / 256)}, "
      f"log|det J| = {torch.linalg.slogdet(J[0])[1].item():.3f} = -196 ln 256 = {-D14 * math.log(256):.3f}")


# %% Solution 4.5
n_train = 2000 if quick_mode() else 10000
seed_everything(0)
y_train = (train[:n_train].double() + torch.rand(n_train, D, dtype=torch.float64)) / 256   # the same noise for every alpha
y_test = (test[:1000].double() + torch.rand(1000, D, dtype=torch.float64)) / 256
print(f"{'alpha':>7s} {'logit log-det (bits/dim)':>25s} {'test bits/dim':>14s}")
for alpha in (1e-6, 1e-3, 1e-2, 0.05, 0.1, 0.25):
    v_fit, _ = Logit(alpha)(y_train)
    mu_a, sigma_a = v_fit.mean(0), v_fit.std(0)
    v, ld = Logit(alpha)(y_test)
    log_p = StandardNormal().log_prob((v - mu_a) / sigma_a) - sigma_a.log().sum() + ld - D * math.log(256)
    print(f"{alpha:7g} {to_bpd(ld.mean().item()):25.3f} {bits_per_dim(log_p, D).mean().item():14.3f}")
