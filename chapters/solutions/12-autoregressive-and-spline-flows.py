"""Solutions to the exercises of chapter 12, Autoregressive and spline flows (chapters/12-autoregressive-and-spline-flows.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("12.1")` runs section "Solution 12.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 12.1
# (check): the coupling's dependencies lie inside an autoregressive layer's, in the order 0, 1, 2, 3
torch.manual_seed(1)
coupling4 = AffineCoupling(half_mask(4), MLP(2, 4, hidden=16, zero_init=False))
maf4 = MaskedAutoregressive(4, hidden=16, num_hidden_layers=2)
with torch.no_grad():
    for p in maf4.net.layers[-1].parameters():
        p.normal_(0, 0.3)
x4 = torch.randn(64, 4)
coupling_pattern = dependency(lambda v: coupling4(v)[0], x4)
maf_pattern = dependency(lambda v: maf4(v)[0], x4)
print("coupling (rows: outputs, columns: inputs):\n", coupling_pattern.int())
print("MAF layer:\n", maf_pattern.int())
print("inside the MAF pattern:", bool((coupling_pattern <= maf_pattern).all()))
print("below the diagonal: coupling", int(torch.tril(coupling_pattern.int(), -1).sum()),
      "MAF", int(torch.tril(maf_pattern.int(), -1).sum()))


# %% Solution 12.2
# (check): the closed-form inverse against bisection on the forward spline
g2 = torch.Generator().manual_seed(2)
w2, h2, d2 = (torch.randn(1000, n, generator=g2, dtype=torch.float64) for n in (K_bins, K_bins, K_bins - 1))
targets = 3.5 * (2 * torch.rand(1000, generator=g2, dtype=torch.float64) - 1)   # some in the tails
closed_form, _ = rational_quadratic_spline(targets, w2, h2, d2, inverse=True, bound=bound)
inside = targets.abs() < bound
low, high = torch.full_like(targets, -bound), torch.full_like(targets, bound)
for _ in range(60):
    mid = (low + high) / 2
    too_high = rational_quadratic_spline(mid, w2, h2, d2, bound=bound)[0] > targets
    high, low = torch.where(too_high, mid, high), torch.where(too_high, low, mid)
bisection = torch.where(inside, (low + high) / 2, targets)                       # the tails: the identity
print(f"largest difference, closed form against bisection: {(closed_form - bisection).abs().max().item():.2e}")
assert torch.allclose(closed_form, bisection, rtol=0, atol=1e-12)


# %% Solution 12.3
# the sweeps of MAF's sampling direction, one at a time, and the passes of each direction
torch.manual_seed(3)
order6 = [4, 1, 5, 0, 3, 2]
layer6 = MaskedAutoregressive(6, hidden=32, num_hidden_layers=2, order=order6).double()
with torch.no_grad():
    for p in layer6.net.layers[-1].parameters():
        p.normal_(0, 0.5)
z6 = torch.randn(4, 6, dtype=torch.float64)
final, _ = layer6.inverse(z6)


def one_pass(z, reads):
    # MAF's sampling formula x = z e^s + t, with s and t computed by the MADE from its reading of x
    t, s = layer6.shift_and_log_scale(reads)
    return z * torch.exp(s) + t, s


current = torch.zeros_like(z6)
print("order:", order6)
for sweep in range(1, 7):
    current, _ = one_pass(z6, current)                         # one sweep, reading the last guess
    error = (current - final).abs().amax(0)
    print(f"after sweep {sweep}: largest error per dimension", " ".join(f"{e:8.1e}" for e in error.tolist()))
assert torch.equal(autoregressive_solve(z6, one_pass, 6)[0], final)

for direction in ("maf", "iaf"):
    calls = []
    layer = MaskedAutoregressive(6, hidden=32, num_hidden_layers=2, direction=direction)
    hook = layer.net.register_forward_hook(lambda *_: calls.append(1))
    layer(z6.float())
    density_calls = len(calls)
    layer.inverse(z6.float())
    hook.remove()
    print(f"{direction.upper()}: density (forward) {density_calls} pass(es) of the MADE, "
          f"sampling (inverse) {len(calls) - density_calls}")


# %% Solution 12.4
# the spline coupling on the rings with 2, 4, 8 and 16 bins
rings_train, rings_test = data["rings"]
for bins in (2, 4, 8, 16):
    model = toy_model("spline_coupling", **configs["spline_coupling"], num_bins=bins, seed=0)
    run = fit(model, rings_train, **train_kw, seed=0)
    print(f"K = {bins:2d}: {count_parameters(model):6,} parameters, {run.seconds:5.1f} s, "
          f"test NLL {evaluate(model, rings_test).nats:.3f}")
print(f"RealNVP (table, mean of 3 seeds): {mean_sd('rings', 'realnvp')[0]:.3f}; true density {true['rings']:.3f}")
