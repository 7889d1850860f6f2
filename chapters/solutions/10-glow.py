"""Solutions to the exercises of chapter 10, Glow (chapters/10-glow.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("10.1")` runs section "Solution 10.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 10.1
sigma = h.std((0, 2, 3), unbiased=False)
closed_form = -h.shape[2] * h.shape[3] * torch.log(sigma + 1e-6).sum()
print(f"closed form {closed_form.item():.3f}   the layer's log-det {log_det[0].item():.3f}")
assert torch.allclose(closed_form, log_det[0], atol=1e-3)
with torch.no_grad():
    other = first(prep(splits["test"][:16])[0])[1]          # other digits
assert torch.allclose(other, log_det[0].expand_as(other))     # the same constant for any input


# %% Solution 10.2
x = torch.randn(2, 8, 5, 5)
for layer in (ReversePermutation(8), RandomPermutation(8, seed=3)):
    P = torch.eye(8)[layer.perm]                        # row c picks input channel perm[c]
    z, log_det_p = layer(x)
    assert torch.equal(F.conv2d(x, P[:, :, None, None]), z)
    assert torch.linalg.slogdet(P)[1].item() == 0.0 and (log_det_p == 0).all()
    print(f"{type(layer).__name__:18s} order {layer.perm.tolist()}: a 1x1 convolution with a permutation matrix, log|det P| = 0")


# %% Solution 10.3
for c in (4, 8, 13):
    assert count_parameters(InvertibleConv1x1(c)) == c * c
convs = [m for m in cpu_model.modules() if isinstance(m, InvertibleConv1x1)]
print(f"{len(convs)} convolutions, channels {sorted({m.num_channels for m in convs})}, "
      f"{sum(count_parameters(m) for m in convs)} parameters of {count_parameters(cpu_model):,}")
assert sum(count_parameters(m) for m in convs) == 8 * 16 + 8 * 64 == 640


# %% Solution 10.4
steps = 30 if QUICK else 300
few = test[:1000]
for label, use_data in [("data-dependent start", True), ("identity start", False)]:
    seed_everything(0)
    model = small_glow("conv1x1")
    if use_data:
        initialize_from_data(model, splits["train"][:BATCH])
    else:
        for layer in model.modules():
            if isinstance(layer, ActNorm):
                layer.initialized.fill_(True)
    start_bpd = evaluate(model, few).bpd
    r = fit(model, splits["train"], steps=steps, batch_size=BATCH, lr=1e-3, seed=0, test=few)
    print(f"{label:21s} at the start {start_bpd:7.3f} bits/dim, after {steps} steps {r.test_loss:7.3f}")
