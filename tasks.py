"""
The toy tasks of train_tiny.py, behind one small interface, so that the training loop has no task branches.

A task knows its token lengths, draws problems and scores responses:

    task.vocab_size, task.prompt_len, task.max_new   # the model's vocabulary; prompt and longest response, in tokens
    task.values                                      # (lo, hi): the answer tokens a noisy teacher may replace
    task.holds_out                                   # False: every prompt is the same, nothing can be held out
    task.batch(n, gen) -> prompts (n, P), targets (n, L)          # long tensors; targets end with EOS, then PAD
    task.score(responses, mask, targets, partial_credit) -> reward (B,) float, exact (B,) bool, length (B,) long
    task.show(prompt, response, target) -> one line describing a mistake

Sort (the default): sort 10-14 random digits (min_digits, max_digits). Pairs (config/long.py): 68 pairs "r F(r)" then the end token.
Automaton (config/automaton.py): steer a fixed automaton through given states; a mistake throws every later step off.
Around them: make(config) picks one, teacher() is the warm start's noisy teacher, Problems draws training problems
that are never held out, evaluate() is the held-out evaluation (greedy exact match and the sampled reward).
Tokens: the digits 0-9, '=' (ends the prompt), '$' (ends the answer), '.' (pads a prompt), a-j (pairs' values, automaton's states).
"""

import torch

import ctpo

DIGITS = "0123456789"
EQ, EOS, BLANK = 10, 11, 12  # '=' ends the prompt, '$' ends the answer, '.' left-pads the prompt
LETTER0 = 13  # pairs: the values a..j are tokens 13..22 (their own tokens: a value is never mistaken for a key)
VOCAB = DIGITS + "=$." + "abcdefghij"  # sort uses the first 13 tokens only
PAD = EOS  # response padding after the end token (never scored: the mask is 0 there)


def decode(tokens):
    return "".join(VOCAB[i] for i in tokens)


class Sort:
    """Sort a string of min_digits..max_digits random digits. The prompt is the digits, left-padded with '.'
    to max_digits and closed by '='; the answer is the digits in ascending order, then '$':

        ...31415926535897932=  ->  11233455567899999$

    One wrong count anywhere makes the whole answer wrong: position matters. Reward: (1 - partial_credit) *
    exact + partial_credit * (positions right) / max(response length, answer length)."""

    vocab_size, values, holds_out = LETTER0, (0, 10), True

    def __init__(self, min_digits, max_digits):
        self.min_digits, self.max_digits = min_digits, max_digits
        self.prompt_len, self.max_new = max_digits + 1, max_digits + 4  # 3 spare tokens for a late end token
        self.name = f"sort {min_digits}-{max_digits} digits"

    def batch(self, n, gen):
        D = self.max_digits
        k = torch.randint(self.min_digits, D + 1, (n,), generator=gen)  # (n,) digits per problem
        digits = torch.randint(0, 10, (n, D), generator=gen)  # (n, D)
        blank = torch.arange(D)[None, :] < (D - k)[:, None]  # (n, D) left padding
        prompts = torch.cat([torch.where(blank, BLANK, digits), torch.full((n, 1), EQ)], dim=1)
        srt = torch.where(blank, 10, digits).sort(dim=1).values  # blanks (as 10) sort last
        targets = torch.cat([srt, torch.full((n, 1), PAD)], dim=1)  # (n, D + 1)
        pos = torch.arange(D + 1)[None, :]
        targets = torch.where(pos < k[:, None], targets, PAD)
        return prompts, torch.where(pos == k[:, None], EOS, targets)

    def score(self, responses, mask, targets, partial_credit):
        """A response matches when every token up to and including its end token equals the target's."""
        B = responses.size(0)
        W = max(responses.size(1), targets.size(1))
        resp = torch.full((B, W), -1, dtype=torch.long, device=responses.device)
        resp[:, : responses.size(1)] = torch.where(mask, responses, -1)
        tgt = torch.full((B, W), -2, dtype=torch.long, device=responses.device)
        tgt[:, : targets.size(1)] = targets
        tgt_len = (targets != PAD).sum(dim=1) + 1  # digits + the end token
        tgt = torch.where(torch.arange(W, device=tgt.device)[None, :] < tgt_len[:, None], tgt, -2)
        resp_len = mask.sum(dim=1)
        right = (resp == tgt).sum(dim=1)
        exact = (right == tgt_len) & (resp_len == tgt_len)
        partial = right.float() / torch.maximum(resp_len, tgt_len).float()
        return (1 - partial_credit) * exact.float() + partial_credit * partial, exact, resp_len

    def show(self, prompt, response, target):
        want = decode(target[: (target != PAD).sum() + 1].tolist())
        return f"{decode(prompt.tolist()).lstrip('.')}  got {decode(response.tolist()):<22} want {want}"


# Pairs, the long-response toy (docs/toy.md, "Long responses"). The answer is n_pairs pairs "r F(r)": r is ANY
# digit (free: the reward never looks at it; the teacher draws it uniformly), F a fixed table (a permutation of the
# digits, values written a..j), then '$'. The prompt is '=' alone: every problem is the same, and what varies is
# the policy's own choices (the held-out evaluation draws fresh samples).
#     =  ->  3e 9g 0j 3e 7b ... $         (F(3) = e, F(9) = g, F(0) = j, F(7) = b)
# Every value is a lookup of the token just before it (a bigram, learned in ~100 warm-start steps), so the
# difficulty is the same at every position. With teacher_noise the warm start learns the teacher's noisy values,
# and RL has something to learn: sharpen them.
PAIRS_TABLE = torch.tensor([9, 2, 5, 4, 7, 0, 8, 1, 3, 6])  # F(r) = a..j[PAIRS_TABLE[r]]


class Pairs:
    """n_pairs pairs "r F(r)", then '$'. Pair k is right when response token 2k + 1 is F(response token 2k);
    reward: (1 - partial_credit) * exact + partial_credit * (pairs right + end token right) / (n_pairs + 1)."""

    vocab_size, values, holds_out = len(VOCAB), (LETTER0, LETTER0 + 10), False

    def __init__(self, n_pairs):
        self.n_pairs = n_pairs
        self.prompt_len, self.max_new = 1, 2 * n_pairs + 4
        self.name = f"pairs x {n_pairs}"

    def batch(self, n, gen):
        r = torch.randint(0, 10, (n, self.n_pairs), generator=gen)  # (n, K) the free digits
        ans = torch.stack([r, PAIRS_TABLE[r] + LETTER0], dim=2).view(n, 2 * self.n_pairs)  # (n, 2K)
        return torch.full((n, 1), EQ), torch.cat([ans, torch.full((n, 1), EOS)], dim=1)

    def score(self, responses, mask, targets, partial_credit):
        """exact = every pair right, '$' at token 2 n_pairs and nothing after it (targets are not needed)."""
        B, T = responses.shape
        L = 2 * self.n_pairs
        resp = torch.full((B, max(T, L + 1)), -1, dtype=torch.long, device=responses.device)
        resp[:, :T] = torch.where(mask, responses, -1)
        free, value = resp[:, 0:L:2], resp[:, 1:L:2]  # (B, K)
        table = PAIRS_TABLE.to(responses.device)
        ok = (free >= 0) & (free < 10) & (value == table[free.clamp(0, 9)] + LETTER0)
        right = ok.sum(dim=1) + (resp[:, L] == EOS).long()
        resp_len = mask.sum(dim=1)
        exact = (right == self.n_pairs + 1) & (resp_len == L + 1)
        return (1 - partial_credit) * exact.float() + partial_credit * right.float() / (self.n_pairs + 1), exact, resp_len

    def show(self, prompt, response, target):  # the answer is too long for a line, and any free digits are right
        return f"=  got {decode(response.tolist())[:20]}... (length {len(response)})  want r F(r) x {self.n_pairs}, then $"


# Automaton, the toy with entangled credit (docs/lag.md). A fixed automaton with 3 states and 3 actions: action x moves
# state s to AUTOMATON[s, x]; every row and column is a permutation (a Latin square). The answer is a walk of n_pairs
# steps from state 0, then '$': step k is one digit 3 s + x, a claim s about the current state and a free action x
# (any: the reward never looks at it). Step k is right when s is the state that the response's own actions so far
# reached. The rule a warm start learns is a bigram (the state after digit 3 s + x is AUTOMATON[s, x]); once a claim is
# wrong, that rule carries it on, and since a column is a permutation every later claim is wrong too (until a random
# one happens to be right): a token earns credit only when its whole prefix is right, the lab's entangled credit
# (docs/lab.md, chapter 2), on a transformer.
#     =  ->  124610$        (6 steps: digit 3 s + x; the walk 0 -1-> 0 -2-> 1 -1-> 2 -0-> 0 -1-> 0 -0-> 2)
AUTOMATON = torch.tensor([[2, 0, 1], [1, 2, 0], [0, 1, 2]])  # AUTOMATON[s, x]: the state after action x in state s


class Automaton:
    """n_pairs digits 3 s + x (a claimed state s, a free action x, each 0-2) from state 0, then '$'. Step k is right
    when its s is the state the response's actions before it reached (a token that is not a digit 0-8 is a wrong step
    and leaves the state as it is). Reward: (1 - partial_credit) * exact + partial_credit * (steps right + end token
    right) / (n_pairs + 1), like pairs'."""

    vocab_size, values, holds_out = LETTER0, (0, 9), False

    def __init__(self, n_pairs):
        self.n_pairs = n_pairs
        self.prompt_len, self.max_new = 1, n_pairs + 4
        self.name = f"automaton, 3 states x {n_pairs} steps"

    def batch(self, n, gen):
        actions = torch.randint(0, 3, (n, self.n_pairs), generator=gen)  # (n, K) free
        claims, s = torch.empty_like(actions), torch.zeros(n, dtype=torch.long)
        for k in range(self.n_pairs):
            claims[:, k] = s
            s = AUTOMATON[s, actions[:, k]]
        return torch.full((n, 1), EQ), torch.cat([3 * claims + actions, torch.full((n, 1), EOS)], dim=1)

    def score(self, responses, mask, targets, partial_credit):
        """exact = every step right, '$' at token n_pairs and nothing after it (targets are not needed)."""
        B, T = responses.shape
        K, table = self.n_pairs, AUTOMATON.to(responses.device)
        resp = torch.full((B, max(T, K + 1)), -1, dtype=torch.long, device=responses.device)
        resp[:, :T] = torch.where(mask, responses, -1)
        s, right = torch.zeros(B, dtype=torch.long, device=responses.device), (resp[:, K] == EOS).long()
        for k in range(K):
            t = resp[:, k]
            ok = (t >= 0) & (t < 9)
            right += (ok & (t // 3 == s)).long()
            s = torch.where(ok, table[s, (t % 3).clamp(0, 2)], s)
        resp_len = mask.sum(dim=1)
        exact = (right == K + 1) & (resp_len == K + 1)
        return (1 - partial_credit) * exact.float() + partial_credit * right.float() / (K + 1), exact, resp_len

    def show(self, prompt, response, target):  # any actions are right: the claims are what counts
        return f"=  got {decode(response.tolist())}  want {self.n_pairs} claims 3 s + x that follow the actions, then $"


TASKS = {"sort": lambda c: Sort(c["min_digits"], c["max_digits"]), "pairs": lambda c: Pairs(c["n_pairs"]),
         "automaton": lambda c: Automaton(c["n_pairs"])}  # fmt: skip


def make(config):
    """The task a config dict names (config["task"])."""
    return TASKS[config["task"]](config)


def teacher(task, targets, noise, gen):
    """The warm start's supervised answer: targets with each value token (task.values) replaced by a uniform random
    one with probability noise; the end token and padding never. No random draw at all when noise is 0."""
    if noise == 0:
        return targets
    lo, hi = task.values
    noisy = (targets >= lo) & (targets < hi) & (torch.rand(targets.shape, generator=gen) < noise)
    return torch.where(noisy, torch.randint(lo, hi, targets.shape, generator=gen), targets)


class Problems:
    """Training problems drawn from gen, never equal to a held-out prompt (when the task holds any out)."""

    def __init__(self, task, gen, heldout_prompts):
        self.task, self.gen = task, gen
        self.heldout = {tuple(r) for r in heldout_prompts.tolist()} if task.holds_out else set()

    def __call__(self, n):
        prompts, targets = self.task.batch(n, self.gen)
        bad = [i for i, row in enumerate(prompts.tolist()) if tuple(row) in self.heldout]
        while bad:  # astronomically rare with 16+ digits, but a held-out prompt must never be trained on
            p, t = self.task.batch(len(bad), self.gen)
            prompts[bad], targets[bad] = p, t
            bad = [i for i in bad if tuple(prompts[i].tolist()) in self.heldout]
        return prompts, targets


@torch.no_grad()
def evaluate(model, task, prompts, targets, temperature, partial_credit, n_sampled=128, seed=1, show=0):
    """Greedy exact match on prompts (minGPT adder style; prints the first `show` mistakes), and the reward of 4
    samples at `temperature` for each of the first n_sampled prompts (generator seeded with `seed`). Returns the
    float64 sums (exact matches, prompts, rewards, samples), for the caller to reduce over ranks."""
    model.eval()
    g = torch.Generator(device=prompts.device).manual_seed(0)  # greedy: top_k=1 draws nothing random
    roll = ctpo.sample(model, prompts, task.max_new, EOS, PAD, temperature=1.0, top_k=1, generator=g)
    exact = task.score(roll.responses, roll.mask, targets, 0.0)[1]
    q = prompts[:n_sampled].repeat_interleave(4, dim=0)
    g.manual_seed(seed)
    sroll = ctpo.sample(model, q, task.max_new, EOS, PAD, temperature=temperature, generator=g)
    reward = task.score(sroll.responses, sroll.mask, targets[: q.size(0) // 4].repeat_interleave(4, dim=0), partial_credit)[0]
    for i in (~exact).nonzero().flatten()[:show].tolist():
        print(f"  mistake: {task.show(prompts[i], roll.responses[i][roll.mask[i]], targets[i])}")
    return torch.tensor(
        [exact.sum().item(), exact.numel(), reward.sum().item(), reward.numel()], dtype=torch.float64, device=prompts.device
    )
