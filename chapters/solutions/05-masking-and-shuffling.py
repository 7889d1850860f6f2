"""Solutions to the exercises of chapter 5, Masking and shuffling (chapters/05-masking-and-shuffling.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("5.1")` runs section "Solution 5.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 5.1
for dim in (2, 4, 6, 10, 40):
    for scheme in ("alternating", "half+reverse"):
        torch.manual_seed(0)
        stack = coupling_stack(dim, scheme, num_couplings=4, hidden=16, zero_init=False)
        pats = dependency_after(stack, torch.randn(3, dim))
        depth = mixing_depth(pats)
        print(f"D = {dim:2d}, {scheme:12s}: full dependence after {depth} couplings;"
              f" independent pairs after 2: {(~pats[1]).sum().item()}")
        assert depth == (2 if dim == 2 else 3)
        if dim >= 4:   # the pairs left after two: outputs of the B part and other B inputs, (D/2)(D/2 - 1) of them
            assert (~pats[1]).sum().item() == (dim // 2) * (dim // 2 - 1)


# %% Solution 5.2
per_coupling = lambda w: w * w + 296 * w + 294
assert 6 * per_coupling(192) == count_parameters(build("half", 192)) == 563_940
root = -148 + math.sqrt(148 ** 2 + 55_280)
print(f"positive root {root:.2f}")
assert 6 * (per_coupling(130) + 196 ** 2) == count_parameters(build("half+1x1conv", 130)) == 564_540
assert runs["1x1conv, rotation init"]["hidden"] == round(root) == 130      # what width_for_params found


# %% Solution 5.3
conv = InvertibleConv1x1(8, seed=3).double()
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    for p in (conv.lower, conv.upper, conv.log_s):
        p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
sign, log_abs_det = torch.linalg.slogdet(conv.weight())
print(f"slogdet: {log_abs_det.item():.12f}   sum of log|s|: {conv.log_s.sum().item():.12f}")
assert torch.allclose(log_abs_det, conv.log_s.sum())
assert torch.linalg.det(conv.p).abs().item() == 1.0
x = torch.randn(2, 8, 5, 4, dtype=torch.float64)
assert torch.allclose(conv(x)[1], 5 * 4 * log_abs_det.expand(2))
assert torch.allclose(conv(x)[1], flow_log_abs_det(conv, x))            # and autograd agrees


# %% Solution 5.4
def depth_by_rule(dim, perms):
    """Couplings until full dependence for half+random, from the rule alone. perms: (N, K, D), one row per draw."""
    N, K, _ = perms.shape
    dep = torch.eye(dim, dtype=torch.bool).repeat(N, 1, 1)         # dep[n, i, j]: output i depends on input j
    depth = torch.zeros(N, dtype=torch.long)                     # 0: not yet
    for k in range(K):
        dep[:, dim // 2:] |= dep[:, :dim // 2].any(1, keepdim=True)  # the coupling: the second half transforms
        dep = dep.gather(1, perms[:, k, :, None].expand(N, dim, dim))  # the permutation: z_i = y_perm[i]
        depth[(depth == 0) & dep.flatten(1).all(1)] = k + 1
        if (depth > 0).all():
            break
    return depth

# (a) the draws of the table above
for (dim, draw), autograd_depth in depth_draws.items():
    stack = coupling_stack(dim, "half+random", num_couplings=32, seed=100 * draw)
    perms = torch.stack([block[1].perm for block in stack])[None]
    assert depth_by_rule(dim, perms).item() == autograd_depth
print("the rule reproduces all", len(depth_draws), "autograd depths")

# (b) many draws
draws = 100 if quick_mode() else 1000
gen = torch.Generator().manual_seed(0)
for dim in (16, 64, 196):
    perms = torch.rand(draws, 64, dim, generator=gen).argsort(2)
    d = depth_by_rule(dim, perms).float()
    assert (d > 0).all()
    q10, q90 = d.quantile(torch.tensor([0.1, 0.9])).tolist()
    print(f"D = {dim:3d}, {draws} draws: mean {d.mean():5.2f}, sd {d.std():4.2f}, 10%-90% {q10:.0f}-{q90:.0f};"
          f"  2 log2 D + 1 = {2 * math.log2(dim) + 1:5.2f}")
