"""Solutions to the exercises of chapter 13, What flows are and are not good for (chapters/13-what-flows-are-good-for.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("13.1")` runs section "Solution 13.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 13.1
# (check): the tail of log p_Z(z / T) - D log T against (1/T^2) log p_Z(z) for one dimension
from flowlib.distributions import StandardLogistic, StandardNormal

T = 0.7
z = torch.linspace(-30, 30, 601, dtype=torch.float64)[:, None]
for prior in (StandardNormal(), StandardLogistic()):
    gap = prior.log_prob(z / T) - math.log(T) - prior.log_prob(z) / T ** 2
    print(f"{type(prior).__name__:16s} spread of the gap over z in [-30, 30]: {gap.std():.3g}")
# logistic tails: log p(z) ~ -|z|, so the gap grows like |z| (1/T^2 - 1/T)
slope = (gap[-1] - gap[-11]).item() / (z[-1] - z[-11]).item()
print(f"slope of the logistic gap at z = 30: {slope:.4f}; 1/T^2 - 1/T = {1 / T ** 2 - 1 / T:.4f}")
assert abs(slope - (1 / T ** 2 - 1 / T)) < 1e-3


# %% Solution 13.2
# T*^2 = mean ||z||^2 / D for the normal prior, against a search over T
z_test, det_test, _ = latent["RealNVP"]
D = z_test.shape[1]
t_star = math.sqrt((z_test.double() ** 2).sum(1).mean().item() / D)
grid = torch.linspace(max(t_star - 0.2, 0.05), t_star + 0.2, 401, dtype=torch.float64).tolist()
mean_log_q = [tempered_log_prob(models["RealNVP"].prior, z_test.double(), det_test.double(), t).mean().item()
              for t in grid]
t_best = grid[int(np.argmax(mean_log_q))]
gain = bits_per_dim(-(max(mean_log_q) - tempered_log_prob(models["RealNVP"].prior, z_test.double(),
                                                              det_test.double(), 1.0).mean().item()), D)
print(f"closed form T* = {t_star:.4f}; best T on the grid {t_best:.4f}; "
      f"gain over T = 1: {gain:.4f} bits/dim")
assert abs(t_best - t_star) < 2e-3


# %% Solution 13.3
# the score |bits/dim - median of the validation digits| (a two-sided, "typicality" score)
print(f"{'':22s}" + "".join(f"{n + ': bpd':>16s}{n + ': two-sided':>22s}" for n in models))
for set_name in image_sets:
    if set_name == "test digits":
        continue
    cells = []
    for name in models:
        centre = bpd[name]["validation digits"].median()
        two_sided = lambda b: (b - centre).abs()
        cells.append(f"{auroc(bpd[name]['test digits'], bpd[name][set_name]):16.2f}"
                     f"{auroc(two_sided(bpd[name]['test digits']), two_sided(bpd[name][set_name])):22.2f}")
    print(f"{set_name:22s}" + "".join(cells))


# %% Solution 13.4
# where the all-black images' codes lie, against the typical set of the prior
model = models["RealNVP"]
D = model.num_dims
torch.manual_seed(8)
z_black = codes("RealNVP", image_sets["all black, 1 image"])[0]
norms = {"prior draws": model.prior.sample((N_OOD, D), generator=torch.Generator().manual_seed(9)),
         "test digits": latent["RealNVP"][0], "all-black images": z_black}
print(f"chi-square with D = {D}: ||z||^2 / D has mean 1 and std {math.sqrt(2 / D):.3f}")
for label, z in norms.items():
    r = (z.double() ** 2).sum(1) / D
    print(f"{label:18s} ||z||^2 / D: mean {r.mean():.3f}, min {r.min():.3f}, max {r.max():.3f}; "
          f"log p_Z(z) per dim {model.prior.log_prob(z).mean() / D:.3f}")
