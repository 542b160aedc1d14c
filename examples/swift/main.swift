// grpo_swift from Swift: the library's Array API, no Python, no C pointers.
//
//   swift run grpo-swift-example
//
// 2 prompts x G=4 completions of length <= 3 and two reward functions (correctness, format):
// group advantages, per-token log-probs from logits, and the 'grpo' loss at the first update
// of a generation (ratio 1, beta = 0): the loss is 0 while its gradient is the REINFORCE
// gradient -A_i / (L_i B). The program checks both and exits non-zero if they do not hold.
import GRPOSwift
#if canImport(Glibc)
import Glibc
#endif

let B = 8, T = 3, V = 5, G = 4

// 1. Advantages: rewards (B, 2) row-major, reward weights 1.0 and 0.5 (TRL's reward_weights).
let rewards: [Double] = [1, 1, 0, 1, 0, 0.5, 1, 0,
                         0, 1, 0, 1, 1, 1, 0, 0]
let adv = try Advantages.compute(rewards: rewards, funcs: 2, weights: [1.0, 0.5],
                                 config: AdvantagesConfig(numGenerations: G))

// 2. Log-probs of the sampled tokens from (B*T, V) logits.
let lengths = [3, 1, 2, 3, 2, 3, 1, 2]
var logits = [Float](repeating: 0, count: B * T * V)
for i in logits.indices { logits[i] = Float((Double(i) * 0.37).truncatingRemainder(dividingBy: 2.0) - 1.0) }
let tokens = (0..<(B * T)).map { Int64(($0 * 7) % V) }
let mask = (0..<(B * T)).map { UInt8(($0 % T) < lengths[$0 / T] ? 1 : 0) }
let lp = try LogProbs.compute(logits: logits, vocab: V, targets: tokens, rowMask: mask)

// 3. The loss at ratio 1 (no oldLogps), beta = 0, and its gradient d loss / d logps.
let loss = try PolicyLoss.compute(batch: B, length: T, logps: lp.logProbs, advantages: adv.advantages.map(Float.init),
                                  mask: mask, config: LossConfig(lossType: .grpo))

print("row  advantage  L  grad/token")
var maxDev = 0.0, norm = 0.0
for i in 0..<B {
    let want = -adv.advantages[i] / Double(lengths[i] * B)
    print(i, adv.advantages[i], lengths[i], loss.grad[i * T])
    for t in 0..<T {
        let g = Double(loss.grad[i * T + t])
        maxDev = max(maxDev, abs(g - (mask[i * T + t] == 1 ? want : 0)))
        norm += g * g
    }
}
norm = norm.squareRoot()
print("loss \(loss.loss) (policy term \(loss.metrics.policyTerm)), gradient norm \(norm)")
print("max |grad - (-A_i / (L_i B))| = \(maxDev)")
print("frac_reward_zero_std = \(Double(adv.isStdZero.filter { $0 }.count) / Double(B))")

// Errors are thrown as GRPOError (kind + message), never a trap.
do {
    _ = try Advantages.compute(rewards: [1.0, 0.0, 1.0], config: AdvantagesConfig(numGenerations: 2))
} catch {
    print("3 rewards with G = 2 -> \(error.kind): \(error.message)")
}
guard abs(loss.loss) < 1e-6, norm > 1e-3, maxDev < 1e-6 else {
    print("unexpected: the loss should be ~0 and the gradient the REINFORCE gradient")
    exit(1)
}
