"""Solutions to the exercises of chapter 3, Affine coupling (RealNVP) (chapters/03-affine-coupling.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("3.1")` runs section "Solution 3.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 3.1
# (check): by hand against a large sample
import math

radii = [0.75, 1.5, 2.25, 3.0]
variance = sum(r * r for r in radii) / len(radii) / 2 + 0.08 ** 2     # E[r^2] E[cos^2] + noise variance
by_hand = math.log(2 * math.pi * math.e * variance)                    # (1/2) log det(2 pi e variance I), D = 2
big_train, big_test = toy_splits("rings", 200_000, 200_000, seed=1)
sampled = gaussian_nll(big_train, big_test)
print(f"variance per coordinate: by hand {variance:.4f}, sample", [round(v, 4) for v in big_train.var(0).tolist()])
print(f"best Gaussian's NLL: by hand {by_hand:.4f}, 200,000 test points {sampled:.4f}, "
      f"the table (5,000 test points) {gauss['rings']:.4f}")
assert abs(sampled - by_hand) < 0.01


# %% Solution 3.2
# (check): the gradient of the first coupling's output layer, by autograd and by the formula
for name in ("rings", "8gaussians", "two_moons"):
    train = data[name][0]
    model = toy_model("nice", **config, seed=0)
    initialize_from_data(model, train)
    first, log_scale = model.flow[0], model.flow[-1].log_scale.detach()
    x1, x2 = train[:, first.mask], train[:, ~first.mask]            # conditioning and shifted coordinates
    loss = -model.log_prob(train).mean()
    grad_w, grad_b = torch.autograd.grad(loss, [first.net[-1].weight, first.net[-1].bias])
    with torch.no_grad():
        hidden = torch.nn.Sequential(*list(first.net)[:-1])(x1)     # the last hidden layer, (N, 64)
    c = (2 * log_scale[~first.mask]).exp()                          # e^{2 S_2}
    assert torch.allclose(grad_b, c * x2.mean(0), rtol=1e-4, atol=1e-6)
    assert torch.allclose(grad_w, c[:, None] * (x2.T @ hidden) / len(train), rtol=1e-4, atol=1e-6)
    print(f"{name:10s}: autograd == formula; size of the gradient of the output layer "
          f"{torch.cat([grad_w.flatten(), grad_b]).norm().item():.4f}")


# %% Solution 3.3
# the entropy of the rings as an integral, against the Monte Carlo estimate of the table
step = 0.01
axis = torch.arange(-3.6 + step / 2, 3.6, step, dtype=torch.float64)        # midpoints of the grid cells
log_p = true_log_density("rings", torch.cartesian_prod(axis, axis))
mass = log_p.exp().sum().item() * step ** 2
entropy = -(log_p.exp() * log_p).sum().item() * step ** 2
samples = -true_log_density("rings", data["rings"][1])
standard_error = samples.std().item() / len(samples) ** 0.5
print(f"mass on the grid {mass:.6f}; entropy by the integral {entropy:.4f}, "
      f"by the 5,000 test points {samples.mean().item():.4f} ± {standard_error:.4f}")
assert abs(mass - 1) < 1e-4 and abs(entropy - samples.mean().item()) < 4 * standard_error


# %% Solution 3.4
# NICE with its default logistic prior on the rings
logistic = dict(config, prior="logistic")
before = toy_model("nice", **logistic, seed=0)
initialize_from_data(before, rings_train)
after = toy_model("nice", **logistic, seed=0)
fit(after, rings_train, **train_kw, seed=0)
print(f"logistic NICE, before any step:  {evaluate(before, rings_test).nats:.3f}")
print(f"logistic NICE, after {steps} steps: {evaluate(after, rings_test).nats:.3f}")
print(f"single Gaussian:                 {gauss['rings']:.3f}")
print(f"normal NICE (table, mean):       {mean_sd('rings', 'nice')[0]:.3f}")
