"""Solutions to the exercises of chapter 6, The squeeze (chapters/06-squeeze.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("6.1")` runs section "Solution 6.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 6.1
def after_two_squeezes(c, r, s):
    channel = 16 * c + 8 * (r % 2) + 4 * (s % 2) + 2 * (r // 2 % 2) + (s // 2 % 2)
    return channel, r // 4, s // 4

marker = torch.zeros(1, 1, 28, 28)
marker[0, 0, 5, 3] = 1
print("after one squeeze:", torch.nonzero(squeeze(marker))[0, 1:].tolist(),
      " after two:", torch.nonzero(squeeze(squeeze(marker)))[0, 1:].tolist())
index = torch.arange(2 * 28 * 28.).reshape(1, 2, 28, 28)       # every pixel holds its own number
twice = squeeze(squeeze(index))
for c in range(2):
    for r in range(28):
        for s in range(28):
            assert twice[(0, *after_two_squeezes(c, r, s))] == index[0, c, r, s]
assert after_two_squeezes(0, 5, 3) == (13, 1, 0)


# %% Solution 6.2
x = torch.randn(3, 2, 12, 8)
assert torch.equal(squeeze(x), F.pixel_unshuffle(x, 2))
assert torch.equal(unsqueeze(squeeze(x)), F.pixel_shuffle(squeeze(x), 2)) and torch.equal(unsqueeze(squeeze(x)), x)
print("squeeze twice == pixel_unshuffle(x, 4):", torch.equal(squeeze(squeeze(x)), F.pixel_unshuffle(x, 4)))

# Both put the 16 pixels of each 4 x 4 block at one position; find the channel order of each
block = torch.arange(16.).reshape(1, 1, 4, 4)                  # pixel numbers, row by row
order_twice = squeeze(squeeze(block)).flatten().long()
order_unshuffle = F.pixel_unshuffle(block, 4).flatten().long()
print("pixel in each channel, squeeze twice:       ", order_twice.tolist())
print("pixel in each channel, pixel_unshuffle(x, 4):", order_unshuffle.tolist())
perm = order_twice                                             # channel k of the double squeeze is pixel perm[k]
assert torch.equal(squeeze(squeeze(x)), F.pixel_unshuffle(x, 4)[:, torch.cat([perm + 16 * c for c in range(2)])])

# what a channel mask conditions on, in pixel space (one 4 x 4 block; 1 = conditioning)
print("first half of the channels, squeeze twice:\n", (order_twice[:8, None] == torch.arange(16)).any(0).reshape(4, 4).int())
print("first half of the channels, pixel_unshuffle(x, 4):\n", (order_unshuffle[:8, None] == torch.arange(16)).any(0).reshape(4, 4).int())


# %% Solution 6.3
def macs_per_position(C, F, B, mask):
    c_in, c_out = (C, 2 * C) if mask == "checkerboard" else (C // 2, C)
    return 9 * (c_in * F + 2 * B * F * F + F * c_out)

for C, F, B in ((4, 16, 1), (4, 64, 4), (16, 64, 4), (4, 16, 0)):
    x = torch.randn(2, C, 6, 6)
    layers = {"checkerboard": AffineCoupling(checkerboard_mask(C, 6, 6), ResidualConvNet(C, 2 * C, F, B)).eval(),
              "channel": AffineCoupling(channel_mask(C, 6, 6), ResidualConvNet(C // 2, C, F, B)).eval()}
    for mask, layer in layers.items():
        assert count_macs(layer, lambda: layer(x), len(x)) == 36 * macs_per_position(C, F, B, mask)
    saving = 1 - macs_per_position(C, F, B, "channel") / macs_per_position(C, F, B, "checkerboard")
    assert math.isclose(saving, 3 * C / (6 * C + 4 * B * F))
    print(f"C = {C:2d}, F = {F:2d}, B = {B}: the channel mask saves {saving:.3f}")


# %% Solution 6.4
def realnvp_order(H, num_channel_couplings):
    torch.manual_seed(0)
    net = lambda c_in, c_out: ResidualConvNet(c_in, c_out, hidden_channels=4, num_blocks=0, zero_init=False)
    before = [AffineCoupling(checkerboard_mask(1, H, H, k % 2), net(1, 2)).eval() for k in range(3)]
    after = [AffineCoupling(channel_mask(4, H // 2, H // 2, k % 2), net(2, 4)).eval()
             for k in range(num_channel_couplings)]
    return before + [Squeeze()] + after

for H, checkerboard_only in ((8, 7), (16, 12)):
    depth = mixing_depth(dependency_after(realnvp_order(H, 12), torch.randn(2, 1, H, H)))
    couplings = depth - 1 if depth > 3 else depth
    print(f"{H}x{H}: full dependence after {couplings} couplings (checkerboard only, chapter 5: {checkerboard_only})")
    assert couplings < checkerboard_only
