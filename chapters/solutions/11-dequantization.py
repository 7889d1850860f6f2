"""Solutions to the exercises of chapter 11, Dequantization done better (chapters/11-dequantization.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("11.1")` runs section "Solution 11.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 11.1
sd = 0.5
m = torch.distributions.Normal(torch.tensor(100.5, dtype=torch.float64), sd)
u = (torch.arange(20001, dtype=torch.float64) + 0.5) / 20001
log_p_u_given_x = m.log_prob(x_val + u) - exact_log_p(x_val, 100.5, sd)   # densities in grey levels
kl = (-log_p_u_given_x).mean().item()                                        # q = 1
print(f"KL(uniform || p(u|x)) = {kl:.4f} nats; gap in the table: {gaps[sd]:.4f}")
assert abs(kl - gaps[sd]) < 1e-6


# %% Solution 11.2
model = normal_model(100.5, 0.2)
exact = exact_log_p(x_val, 100.5, 0.2)
means = []
for k in (1, 2, 4, 8, 16, 32, 64, 128, 256):
    means.append(-evaluate(model, data, samples=k).nats)
    print(f"K = {k:3d}: mean estimate {means[-1]:8.4f}   (log P(x) = {exact:.4f})")
assert all(a < b for a, b in zip(means, means[1:])) and means[-1] < exact


# %% Solution 11.3
u_points = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64).view(1, 1, 1, 5)
x_points = torch.zeros(1, 1, 1, 5, dtype=torch.long)                 # one image of 5 pixels, all black
logistic_start = VariationalDequantize(1, base="logistic").double()
print(f"(a) logistic base, untrained: log q(u|x) = {logistic_start.log_q(u_points, x_points).item():.2e}")
assert abs(logistic_start.log_q(u_points, x_points).item()) < 1e-12
normal_start = VariationalDequantize(1, base="normal").double()
closed = (torch.distributions.Normal(0.0, 1.0).log_prob(torch.logit(u_points)) - torch.log(u_points * (1 - u_points)))
print("(b) normal base, closed form per pixel:", [round(v, 4) for v in closed.flatten().tolist()])
print(f"    sum {closed.sum().item():.6f}; the layer's log q(u|x) {normal_start.log_q(u_points, x_points).item():.6f}")
assert torch.allclose(normal_start.log_q(u_points, x_points), closed.sum())
eps = torch.randn(200_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
u_samples = torch.sigmoid(eps)
kl = (torch.distributions.Normal(0.0, 1.0).log_prob(eps) - torch.log(u_samples * (1 - u_samples))).mean().item()
print(f"    KL(q || uniform) = {kl:.4f} nats per dimension, {kl / math.log(2):.3f} bits/dim at the start")


# %% Solution 11.4
model = trained["uniform, equal time", 0]
few = test[:100 if QUICK else 500]
ks = (1, 2, 4, 8) if QUICK else (1, 2, 4, 8, 16, 32)
bpd = [evaluate(model, few, samples=k).bpd for k in ks]
for k, b in zip(ks, bpd):
    print(f"K = {k:2d}: {b:.4f} bits/dim")
steps_down = [a - b for a, b in zip(bpd, bpd[1:])]
print("gain per doubling:", [round(s, 4) for s in steps_down])
fig, ax = plt.subplots(figsize=(5, 3), layout="constrained")
ax.plot([math.log2(k) for k in ks], bpd, "o-")
ax.set_xlabel("log2 K"); ax.set_ylabel("test bits/dim"); ax.set_title("importance-weighted estimate")
