"""Solutions to the exercises of chapter 9, RealNVP on MNIST (chapters/09-realnvp-mnist.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("9.1")` runs section "Solution 9.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 9.1
torch.manual_seed(0)
prior_norms = torch.randn(10_000, 784).norm(dim=1)
print(f"prior: norm {prior_norms.mean().item():.2f} +- {prior_norms.std().item():.2f}   (28 +- 0.71)")
assert abs(prior_norms.mean().item() - 28) < 0.05 and abs(prior_norms.std().item() - 0.5 ** 0.5) < 0.05
with torch.no_grad():
    codes, _ = model(test[:64])
codes = codes.double().cpu()
z_a, z_b = codes[0::2], codes[1::2]
for name, z in [("codes of 64 test digits", codes), ("midpoints of 32 pairs", (z_a + z_b) / 2),
                ("arc points, theta = pi/4", math.cos(math.pi / 4) * z_a + math.sin(math.pi / 4) * z_b)]:
    norms = z.norm(dim=1)
    print(f"{name:26s} norm {norms.mean().item():6.2f} +- {norms.std().item():.2f}")
cosine = torch.nn.functional.cosine_similarity(z_a, z_b, dim=1)
print(f"cosine between the two codes of a pair: {cosine.mean().item():+.3f} on average")


# %% Solution 9.2
import copy
from flowlib import flow_log_abs_det

check = copy.deepcopy(model).double().cpu()              # float64 copy, eval mode: batch norm uses its running statistics
final = check.multiscale.final
torch.manual_seed(0)
with torch.no_grad():
    z, _ = check(test[:3].cpu())
    h, _ = final.inverse(check.multiscale.split_latent(z)[-1])   # the final scale's input, (3, 4, 7, 7)
    _, log_det = final[0](h)
    x, total = h, torch.zeros(3, dtype=torch.float64)
    for coupling in final:                                        # the final scale, one coupling at a time
        x, ld = coupling(x)
        total = total + ld
    _, final_log_det = final(h)
by_autograd = flow_log_abs_det(final[0], h)                       # slogdet of three 196 x 196 Jacobians
for a, b in zip(log_det.tolist(), by_autograd.tolist()):
    print(f"first coupling of the final scale: {a:9.4f}   autograd: {b:9.4f}")
print("final scale = sum of its couplings:", torch.allclose(final_log_det, total))
assert torch.allclose(log_det, by_autograd) and torch.allclose(final_log_det, total)
assert log_det.std() > 1e-6                                       # differs from digit to digit


# %% Solution 9.3
from flowlib.metrics import bits_per_dim

def score(x):
    # bits/dim under the model and mean pixel value (0 to 255) of a batch of 8-bit images
    with torch.no_grad():
        return bits_per_dim(model.log_prob(x), 784).mean().item(), x.float().mean().item()

torch.manual_seed(0)
print(f"{'':16s} {'bits/dim':>9s} {'mean pixel':>11s}")
for t in (0.5, 0.7, 0.85, 1.0):
    gen = torch.Generator(device=device).manual_seed(3)
    bpd, ink = score(model.sample(16, temperature=t, generator=gen))
    print(f"samples, T = {t:<4} {bpd:9.3f} {ink:11.1f}")
bpd, ink = score(test[:16])
print(f"{'test digits':16s} {bpd:9.3f} {ink:11.1f}")


# %% Solution 9.4
import bz2, lzma, zlib

raw = test[:1000].cpu().numpy().tobytes()                 # 784,000 bytes: one byte per pixel
sizes = {"zlib, level 9": len(zlib.compress(raw, 9)),
         "bz2, level 9": len(bz2.compress(raw, 9)),
         "lzma, preset 9e": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))}
print(f"{'raw bytes':18s} {8.0:6.3f} bits per pixel")
for name, size in sizes.items():
    print(f"{name:18s} {8 * size / len(raw):6.3f} bits per pixel")
print(f"{'model, ' + preset:18s} {result.test_bpd:6.3f} bits/dim (all 10,000 test digits)")
