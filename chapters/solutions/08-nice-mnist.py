"""Solutions to the exercises of chapter 8, NICE on MNIST (chapters/08-nice-mnist.ipynb).

Each section runs in the chapter's namespace, after the chapter's own cells, and uses its names:
the chapter's cell `solution("8.1")` runs section "Solution 8.1" and shows its code and output
collapsed (flowlib.book.solutions). To change one, run the chapter, then copy the section into a new
cell of it.
"""

# %% Solution 8.1
nats = result.test_bpd * D * math.log(2)                 # -log P(x), nats per digit
paper_units = D * math.log(256) - nats                   # log p(y) of the [0, 1]-scaled digits
print(f"preset '{preset}': {result.test_bpd:.4f} bits/dim = {nats:.2f} nats per digit (the run reports {result.test_nats:.2f})")
print(f"in the paper's units: {paper_units:.2f} nats; the paper's 1980.50 is ahead by {1980.50 - paper_units:.2f} nats "
      f"= {result.test_bpd - unit_interval_nats_to_bits_per_dim(1980.50, D):.4f} bits/dim")
assert math.isclose(nats, result.test_nats, rel_tol=1e-6)
assert math.isclose(unit_interval_nats_to_bits_per_dim(paper_units, D), result.test_bpd, rel_tol=1e-9)


# %% Solution 8.2
def step_sizes(betas, num_weights=10_000, steps=120, lr=1e-3):
    # |step| / lr of every weight at every step after the first 20, for gradients of pure noise
    weights = torch.zeros(num_weights, requires_grad=True)
    optimizer = torch.optim.Adam([weights], lr=lr, betas=betas, eps=1e-4)
    noise = torch.Generator().manual_seed(0)
    sizes = []
    for step in range(steps):
        weights.grad = torch.randn(num_weights, generator=noise)
        before = weights.detach().clone()
        optimizer.step()
        if step >= 20:
            sizes.append((weights.detach() - before).abs() / lr)
    return torch.cat(sizes)

for betas in ((0.9, 0.99), (0.9, 0.01)):
    s = step_sizes(betas)
    print(f"betas {str(betas):12s} |step| / lr: median {s.median().item():.2f}, largest {s.max().item():6.2f}; "
          f"steps above lr: {(s > 1.01).float().mean().item():6.2%}, above 10 lr: {(s > 10).float().mean().item():.3%}")


# %% Solution 8.3
import copy
from flowlib import flow_log_abs_det

check = copy.deepcopy(model).double().cpu()              # a float64 copy: the loaded model stays as it was
after = check.flow[1:]                                   # four additive couplings and the diagonal scaling
torch.manual_seed(0)
y, _ = check.flow[0](splits["test"][:16])
with torch.no_grad():
    _, log_det = after(y)
sum_s = check.flow[-1].log_scale.sum().item()
by_autograd = flow_log_abs_det(after, y[:1]).item()      # slogdet of one 784 x 784 Jacobian
print(f"log-det of 16 digits: from {log_det.min().item():.6f} to {log_det.max().item():.6f}")
print(f"sum of s: {sum_s:.6f}; autograd, one digit: {by_autograd:.6f}")
assert torch.allclose(log_det, torch.full_like(log_det, sum_s)) and math.isclose(by_autograd, sum_s, rel_tol=1e-9)


# %% Solution 8.4
from flowlib.metrics import bits_per_dim

K, n = 8, 32
digits = splits["test"][:n].to(model.device)
torch.manual_seed(0)
with torch.no_grad():
    log_p = torch.stack([model.log_prob(digits) for _ in range(K)]).double().cpu()   # (K, n), 8-bit log-likelihoods
bpd = bits_per_dim(log_p, D)
average_likelihood = torch.logsumexp(log_p, dim=0) - math.log(K)                   # log (1/K) sum_k p(y_k) - D log 256
print(f"one digit, std over {K} draws: {bpd.std(0).mean().item():.4f} bits/dim (averaged over the {n} digits)")
print(f"mean of {n} digits, std over the draws: {bpd.mean(1).std().item():.4f} bits/dim")
print(f"average of the log-likelihoods: {bpd.mean().item():.4f} bits/dim; "
      f"log of the average likelihood: {bits_per_dim(average_likelihood, D).mean().item():.4f} bits/dim")
assert (average_likelihood >= log_p.mean(0) - 1e-6).all()
