"""Solutions to the exercises of chapter 7, Multi-scale flows (chapters/07-multi-scale.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("7.1")` runs section "Solution 7.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 7.1
# (check against count_macs)
a = 18 * (3 * 784 + 6 * 196 + 7 * 49)
b_multi = 9 * (3 * 784 * 3 + 3 * 196 * 6 + 3 * 196 * 6 + 3 * 49 * 12 + 4 * 49 * 12)
for h in (16, 17, 24):
    assert a * h * h + b_multi * h == macs_per_image(multi_scale(h)), h
b_single = (target - a * HIDDEN ** 2) / HIDDEN             # the single-scale flow's b, from its count
assert a * 20 ** 2 + b_single * 20 == macs_per_image(single_scale(20))   # the same a fits another width
h_star = (-b_multi + math.sqrt(b_multi ** 2 + 4 * a * target)) / (2 * a)
print(f"a = {a:,}, b (multi-scale) = {b_multi:,}, b (single-scale) = {b_single:,.0f}")
print(f"equal-MAC width {h_star:.2f}; the chapter's choice: {WIDE}")
assert round(h_star) == WIDE


# %% Solution 7.2
from flowlib.book.analysis import width_for_params

n_single = count_parameters(single_scale(HIDDEN))
w_params = width_for_params(lambda v: multi_scale(v), n_single, low=HIDDEN, high=4 * HIDDEN)
brute = min(range(HIDDEN, 4 * HIDDEN), key=lambda v: abs(count_parameters(multi_scale(v)) - n_single))
assert w_params == brute                          # bisection agrees with trying every width
print(f"{'model':32s} {'width':>5s} {'parameters':>11s} {'MACs / image':>14s}")
for label, m, v in [("single-scale", single_scale(HIDDEN), HIDDEN),
                    ("multi-scale, same MACs", multi_scale(WIDE), WIDE),
                    ("multi-scale, same parameters", multi_scale(w_params), w_params)]:
    print(f"{label:32s} {v:5d} {count_parameters(m):11,d} {macs_per_image(m):14,.0f}")


# %% Solution 7.3
rgb = torch.randint(0, 256, (2, 3, 32, 32))
print(f"{'scales':>6s} {'multi-scale MACs':>17s} {'single-scale MACs':>18s} {'single / multi':>15s}")
ratios = []
for L in (1, 2, 3, 4):
    m = realnvp_image((3, 32, 32), num_scales=L, hidden_channels=16, num_blocks=1)
    s = realnvp_image_single_scale((3, 32, 32), num_scales=L, hidden_channels=16, num_blocks=1)
    cm = count_macs(m, lambda: m.log_prob(rgb), batch_size=2)
    cs = count_macs(s, lambda: s.log_prob(rgb), batch_size=2)
    ratios.append(cs / cm)
    print(f"{L:6d} {cm:17,.0f} {cs:18,.0f} {cs / cm:15.2f}")
assert ratios[0] == 1.0                    # one scale: 4 checkerboard couplings, nothing to factor out
assert all(r1 < r2 for r1, r2 in zip(ratios, ratios[1:]))   # the saving grows with every scale


# %% Solution 7.4
model = trained["multi-scale"][0][0].eval()
ms = model.multiscale
x = splits["test"][:500]
D = model.num_dims
with torch.no_grad(), torch.random.fork_rng():
    torch.manual_seed(0)                                   # fixed dequantization noise
    z, log_det = model.flow(x)
pieces = ms.split_latent(z)
prior_bits = [(-model.prior.log_prob(p) / (D * math.log(2))).mean().item() for p in pieces]
det_bits = (-log_det / (D * math.log(2))).mean().item()
total = (-(model.prior.log_prob(z) + log_det) / (D * math.log(2))).mean().item()
gauss = 0.5 * math.log2(2 * math.pi * math.e)
print(f"{'term':10s} {'dims':>5s} {'bits/dim of the image':>22s} {'bits per own dim':>17s}")
for l, (p, bits) in enumerate(zip(pieces, prior_bits), start=1):
    own = bits * D / p[0].numel()
    print(f"{'z_' + str(l):10s} {p[0].numel():5d} {bits:22.3f} {own:17.3f}   (std of the piece {p.std():.2f})")
print(f"{'log-det':10s} {'':5s} {det_bits:22.3f}")
print(f"{'total':10s} {D:5d} {sum(prior_bits) + det_bits:22.3f}   (directly: {total:.3f}; standard normal: {gauss:.3f} bits per dim)")
assert abs(sum(prior_bits) + det_bits - total) < 1e-4
