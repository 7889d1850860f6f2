"""Solutions to the exercises of chapter 2, Additive coupling (NICE) (chapters/02-additive-coupling.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("2.1")` runs section "Solution 2.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 2.1
# log|det| of NICE is the sum of S, at every point
nice_flow = with_scaling.flow
x_any = 3 * torch.randn(500, 2)
sum_S = nice_flow[-1].log_scale.sum()
print("autograd log|det J| == sum of S at 500 points:", torch.allclose(flow_log_abs_det(nice_flow, x_any), sum_S.expand(500), atol=1e-4))
z_any, log_det_any = nice_flow(x_any)
print("the flow's own log_det == sum of S:           ", torch.allclose(log_det_any, sum_S.expand(500), atol=1e-5))
print("inverse(forward(x)) == x:                      ", torch.allclose(nice_flow.inverse(z_any)[0], x_any, atol=1e-4))


# %% Solution 2.2
# the logistic peak and the Gaussian entropy, numerically
z_fine = torch.linspace(-10, 10, 200_001, dtype=torch.float64)[:, None]
p_fine = logistic.log_prob(z_fine).exp()
print(f"largest logistic density on the grid: {p_fine.max().item():.6f} at z = {z_fine[p_fine.argmax()].item():.4f}")
print(f"so a volume-preserving flow in 2D has NLL >= 2 log 4 = {2 * math.log(4):.3f} nats")
x_narrow = sigma * torch.randn(1_000_000, 2, dtype=torch.float64)
mc = -torch.distributions.Normal(0.0, sigma).log_prob(x_narrow).sum(1).mean().item()
print(f"entropy of N(0, 0.2^2 I): Monte Carlo {mc:.3f}, formula log(2 pi e sigma^2) = {math.log(2 * math.pi * math.e * sigma**2):.3f} nats")


# %% Solution 2.3
# same partition twice = one coupling with m1 + m2
torch.manual_seed(2)
m1, m2 = (MLP(3, 3, hidden=16, zero_init=False).double() for _ in range(2))
twice = Sequential(AdditiveCoupling(mask, m1), AdditiveCoupling(mask, m2))
x6 = torch.randn(256, D, dtype=torch.float64)
merged = x6.clone()
merged[:, ~mask] = x6[:, ~mask] + m1(x6[:, mask]) + m2(x6[:, mask])
print("two couplings on one partition == one coupling with m1 + m2:", torch.allclose(twice(x6)[0], merged))
print("and x_I1 is untouched:", torch.equal(twice(x6)[0][:, mask], x6[:, mask]))


# %% Solution 2.4
# NICE on the two moons with 1, 2, 4 and 8 couplings
moons_train, moons_test = toy_splits("two_moons", 20_000, 5_000, seed=0)
steps_ex = 100 if quick_mode() else 1000
print(f"true NLL of the test points: {true_nll('two_moons', moons_test):.3f} nats; {steps_ex} steps each")
for k in (1, 2, 4, 8):
    nice_k = toy_model("nice", num_couplings=k, hidden=64, seed=0)
    fit(nice_k, moons_train, steps=steps_ex, lr=1e-3, batch_size=256, schedule="cosine", clip_grad=10.0, unit="nats")
    print(f"{k} coupling{'s' if k > 1 else ' '}: {count_parameters(nice_k):6d} parameters, test NLL {evaluate(nice_k, moons_test).nats:.3f} nats")
