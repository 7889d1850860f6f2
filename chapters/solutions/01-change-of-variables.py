"""Solutions to the exercises of chapter 1, Change of variables (chapters/01-change-of-variables.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("1.1")` runs section "Solution 1.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 1.1
# the formula against torch.distributions.LogNormal
x_pos = torch.linspace(0.01, 4, 400, dtype=torch.float64)
by_formula = prior.log_prob((2 * torch.log(x_pos))[:, None]) + torch.log(2 / x_pos)
log_normal = torch.distributions.LogNormal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
print("log p_Z(2 log x) + log(2/x) == LogNormal(0, 1/2).log_prob(x):", torch.allclose(by_formula, log_normal.log_prob(x_pos)))


# %% Solution 1.2
# the bend alone, by hand and by autograd
c_bend = 0.7
bend_only = Warp2D(bend=c_bend)
v = 2 * torch.randn(1000, 2, dtype=torch.float64)
u, bend_log_det = bend_only(v)
J_bend = jacobian(lambda p: bend_only(p)[0], v)
J_bend_hand = torch.eye(2, dtype=torch.float64).repeat(len(v), 1, 1)
J_bend_hand[:, 1, 0] = -2 * c_bend * v[:, 0]
print("u == (v1, v2 - c (v1^2 - 1)):           ", torch.allclose(u, torch.stack([v[:, 0], v[:, 1] - c_bend * (v[:, 0] ** 2 - 1)], 1)))
print("inverse (u1, u2 + c (u1^2 - 1)) == v:   ", torch.allclose(torch.stack([u[:, 0], u[:, 1] + c_bend * (u[:, 0] ** 2 - 1)], 1), v))
print("autograd Jacobian == [[1, 0], [-2 c v1, 1]]:", torch.allclose(J_bend, J_bend_hand))
print("det == 1 and the layer's log_det == 0:  ", torch.allclose(torch.det(J_bend), torch.ones(len(v), dtype=torch.float64)),
      torch.allclose(bend_log_det, torch.zeros(len(v), dtype=torch.float64)))


# %% Solution 1.3
# |det J_f| = p_Z, and f(z) is uniform
# (by hand: in polar coordinates u1 = exp(-r^2/2), u2 = phi / 2 pi; d(r, phi)/dz has determinant 1/r and
#  d(u1, u2)/d(r, phi) has |determinant| r exp(-r^2/2) / (2 pi), so |det J_f| = exp(-r^2/2) / (2 pi) = p_Z(z))
def to_uniform(z):
    u1 = torch.exp(-0.5 * (z**2).sum(1))
    u2 = torch.remainder(torch.atan2(z[:, 1], z[:, 0]) / (2 * math.pi), 1.0)
    return torch.stack([u1, u2], 1)

z_bm = torch.randn(1000, 2, dtype=torch.float64)
abs_det = torch.det(jacobian(to_uniform, z_bm)).abs()
print("|det J_f(z)| == p_Z(z) at 1000 points:", torch.allclose(abs_det, prior.log_prob(z_bm).exp()))
u_bm = to_uniform(torch.randn(100_000, 2, dtype=torch.float64))
print("means (1/2):", [round(m, 3) for m in u_bm.mean(0).tolist()],
      " variances (1/12 = 0.0833):", [round(s, 4) for s in u_bm.var(0).tolist()])


# %% Solution 1.4
# the exponential distribution as a flow of N(0, 1)
std_normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
f_exp = lambda x: std_normal.icdf(-torch.expm1(-x))       # Phi^{-1}(1 - e^{-x}), without cancellation near 0
x_pos = torch.linspace(0.05, 6, 500, dtype=torch.float64)[:, None]
p_formula = prior.log_prob(f_exp(x_pos)).exp() * jacobian(f_exp, x_pos)[:, 0, 0].abs()
print("p_Z(f(x)) |f'(x)| == exp(-x) on [0.05, 6]:", torch.allclose(p_formula, torch.exp(-x_pos[:, 0])))
z_exp = f_exp(torch.distributions.Exponential(torch.tensor(1.0, dtype=torch.float64)).sample((100_000, 1)))
print(f"f(X) for 1e5 exponential samples: mean {z_exp.mean():.3f} (0), standard deviation {z_exp.std():.3f} (1)")


# %% Solution 1.5
# the grid sum of p_X against the fraction of 10^6 samples in [-8, 8]^2
warp_model = FlowModel(Warp2D(scale=(1.2, 0.45), bend=0.35, angle=math.radians(30), tails=0.6), "normal", (2,)).double()
x_box = warp_model.flow.inverse(torch.randn(10**6, 2, dtype=torch.float64))[0]
print(f"fraction of 10^6 samples in the box: {((x_box.abs() <= 8).all(1)).double().mean().item():.4f}")
for resolution in (25, 50, 100, 200, 400):
    xs_r, ys_r, density_r = density_grid(warp_model, bounds=(-8, 8), resolution=resolution)
    spacing = xs_r[1] - xs_r[0]
    print(f"{resolution:3d} points per axis (spacing {spacing:.3f}): sum of p_X times cell area = {density_r.sum() * spacing**2:.4f}")
