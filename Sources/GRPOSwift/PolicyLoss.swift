// The GRPO policy loss (TRL 1.16 GRPOTrainer._compute_loss): configuration, element types
// and the public entry points. The maths is documented in CBridge/include/grpo_swift.h
// (section "policy loss"); the kernel itself lives in PolicyLoss+Kernel.swift.
#if canImport(Glibc)
import Glibc
#endif

/// TRL's `loss_type`.
public enum LossType: Int32, Sendable, CaseIterable {
    case grpo = 0, bnpo = 1, drGRPO = 2, dapo = 3, luspo = 4, cispo = 5, sapo = 6, vespo = 7
    /// Geometric-mean policy optimisation (TRL 1.16 trl.experimental.gmpo; PolicyLoss+Extras.swift).
    case gmpo = 8

    /// The PPO-style clipped objective (grpo, bnpo, dr_grpo, dapo, luspo).
    var isClipped: Bool {
        switch self {
        case .grpo, .bnpo, .drGRPO, .dapo, .luspo: return true
        default: return false
        }
    }

    public var trlName: String {
        switch self {
        case .grpo: return "grpo"
        case .bnpo: return "bnpo"
        case .drGRPO: return "dr_grpo"
        case .dapo: return "dapo"
        case .luspo: return "luspo"
        case .cispo: return "cispo"
        case .sapo: return "sapo"
        case .vespo: return "vespo"
        case .gmpo: return "gmpo"
        }
    }
}

/// TRL's `importance_sampling_level`.
public enum ImportanceSamplingLevel: Int32, Sendable, CaseIterable {
    case token = 0, sequence = 1
    /// GSPO-token: per token sg(s_i) * exp(lp_t - sg(lp_t)) — the value of the sequence ratio
    /// s_i, the gradient of a token-level ratio (d r_it / d lp_t = s_i, own token only).
    case sequenceToken = 2
}

/// Hyper-parameters of the policy loss, named as in TRL's GRPOConfig, plus the raw numbers
/// TRL normalises with (never guessed by the kernel).
public struct LossConfig: Sendable, Equatable {
    public var lossType: LossType = .dapo
    public var importanceSamplingLevel: ImportanceSamplingLevel = .token
    public var beta: Double = 0
    public var epsilon: Double = 0.2
    /// nil: `epsilon` (TRL's default).
    public var epsilonHigh: Double? = nil
    /// Two-sided clipping cap; nil: off.
    public var delta: Double? = nil
    public var useBiasCorrectionKL = false
    public var sapoTemperaturePos = 1.0
    public var sapoTemperatureNeg = 1.05
    public var vespoKPos = 2.0
    public var vespoLambdaPos = 3.0
    public var vespoKNeg = 3.0
    public var vespoLambdaNeg = 2.0
    /// nil: no off-policy sequence mask.
    public var offPolicyMaskThreshold: Double? = nil
    public var topEntropyQuantile = 1.0
    public var entropyCoef = 0.0
    /// N for dapo/cispo/vespo; nil: the active tokens of this call.
    public var numItemsInBatch: Double? = nil
    public var numProcesses = 1
    public var gradientAccumulationSteps = 1
    /// nil: gradientAccumulationSteps (TRL's default).
    public var stepsPerGeneration: Int? = nil
    /// Required by dr_grpo.
    public var maxCompletionLength: Int? = nil
    /// The per-token KL estimator of the `beta` term (k3, TRL's, by default).
    public var klEstimator: KLEstimator = .k3
    /// Clamp of the per-token KL estimate to [-klClamp, klClamp] (verl clamps k3 to 10); nil: off (TRL).
    public var klClamp: Double? = nil
    /// Dual-clip PPO (verl `clip_ratio_c`, > 1): for A < 0 the clipped loss is capped at -A c; nil: off.
    public var clipRatioC: Double? = nil
    /// The high-entropy mask's threshold computed by the caller (multi-process training:
    /// TRL's `get_high_entropy_mask` takes the quantile of the entropies gathered from every
    /// process); nil: the quantile of this call's valid entropies. Requires
    /// topEntropyQuantile < 1; compared in the per-token precision; NaN selects no token.
    public var entropyThreshold: Double? = nil

    public init(lossType: LossType = .dapo,
                importanceSamplingLevel: ImportanceSamplingLevel = .token) {
        self.lossType = lossType
        self.importanceSamplingLevel = importanceSamplingLevel
    }

    var resolvedEpsilonHigh: Double { epsilonHigh ?? epsilon }

    /// Throws for any value the kernel does not support (never silently ignored).
    func validate() throws(GRPOError) {
        func finite(_ x: Double, _ name: String) throws(GRPOError) {
            guard x.isFinite else { throw GRPOError(.value, "\(name) must be finite, got \(x)") }
        }
        try finite(beta, "beta")
        try finite(epsilon, "epsilon")
        try finite(resolvedEpsilonHigh, "epsilon_high")
        if let delta { try finite(delta, "delta") }
        if let t = offPolicyMaskThreshold, t.isNaN {
            throw GRPOError(.value, "off_policy_mask_threshold must not be NaN")
        }
        guard topEntropyQuantile >= 0, topEntropyQuantile <= 1 else {
            throw GRPOError(.value, "top_entropy_quantile must be in [0, 1], got \(topEntropyQuantile)")
        }
        try finite(entropyCoef, "entropy_coef")
        guard sapoTemperaturePos > 0, sapoTemperaturePos.isFinite,
              sapoTemperatureNeg > 0, sapoTemperatureNeg.isFinite else {
            throw GRPOError(.value,
                "sapo temperatures must be finite and > 0, got pos=\(sapoTemperaturePos), neg=\(sapoTemperatureNeg)")
        }
        try finite(vespoKPos, "vespo_k_pos")
        try finite(vespoKNeg, "vespo_k_neg")
        try finite(vespoLambdaPos, "vespo_lambda_pos")
        try finite(vespoLambdaNeg, "vespo_lambda_neg")
        if let n = numItemsInBatch {
            guard n >= 0, n.isFinite else {
                throw GRPOError(.value, "num_items_in_batch must be finite and >= 0, got \(n)")
            }
        }
        guard numProcesses >= 1 else {
            throw GRPOError(.value, "num_processes must be >= 1, got \(numProcesses)")
        }
        guard gradientAccumulationSteps >= 1 else {
            throw GRPOError(.value, "gradient_accumulation_steps must be >= 1, got \(gradientAccumulationSteps)")
        }
        if entropyThreshold != nil && topEntropyQuantile >= 1 {
            throw GRPOError(.value,
                "entropy_threshold is given but top_entropy_quantile is \(topEntropyQuantile); the threshold is "
                + "used only by the high-entropy mask (top_entropy_quantile < 1)")
        }
        if let s = stepsPerGeneration, s < 1 {
            throw GRPOError(.value, "steps_per_generation must be >= 1, got \(s)")
        }
        if lossType == .drGRPO {
            guard let m = maxCompletionLength else {
                throw GRPOError(.value, "loss_type 'dr_grpo' requires max_completion_length")
            }
            guard m >= 1 else { throw GRPOError(.value, "max_completion_length must be >= 1, got \(m)") }
        } else if let m = maxCompletionLength, m < 1 {
            throw GRPOError(.value, "max_completion_length must be >= 1, got \(m)")
        }
        try validateExtras()
    }
}

/// Scalars of one loss call (see grpo_loss_metrics in the header). NaN: not logged by TRL
/// for this configuration.
public struct PolicyLossMetrics: Sendable, Equatable {
    public var loss = 0.0
    public var policyLoss = 0.0
    public var policyTerm = 0.0
    public var klTerm = 0.0
    public var entropyTerm = 0.0
    public var kl = Double.nan
    public var entropy = Double.nan
    public var clipRatioLowMean = Double.nan
    public var clipRatioHighMean = Double.nan
    public var clipRatioRegionMean = Double.nan
    public var clipRatioLowMin = Double.nan
    public var clipRatioHighMax = Double.nan
    public var cispoClipRatio = Double.nan
    public var vespoPhiSeqMean = Double.nan
    public var numTokens = 0.0
    public var numEntropyTokens = 0.0
    public var numOffPolicyDropped = 0.0
    /// verl's pg_clipfrac_lower (dual-clip PPO; NaN unless clipRatioC is set).
    public var pgClipfracLower = Double.nan
    public init() {}

    /// Every field, in declaration order (for bitwise comparisons and logging).
    public var allValues: [Double] {
        [loss, policyLoss, policyTerm, klTerm, entropyTerm, kl, entropy, clipRatioLowMean,
         clipRatioHighMean, clipRatioRegionMean, clipRatioLowMin, clipRatioHighMax, cispoClipRatio,
         vespoPhiSeqMean, numTokens, numEntropyTokens, numOffPolicyDropped, pgClipfracLower]
    }
}

// MARK: - Element types

/// The per-token compute type: Float for f32/bf16/f16 inputs, Double for f64.
public protocol LossReal: BinaryFloatingPoint, Sendable {
    static func exp(_ x: Self) -> Self
    static func expm1(_ x: Self) -> Self
    static func log(_ x: Self) -> Self
    /// (e^x - 1, e^x - 1 - x): the k3 KL term and its derivative's building block.
    static func expm1AndKL(_ x: Self) -> (expm1: Self, kl: Self)
    init(_ x: Double)
    init(_ x: Float)
    /// Wraps a buffer of this type as AuxValues.
    static func auxValues(_ b: UnsafeBufferPointer<Self>) -> AuxValues
}

extension Float: LossReal {
    @inline(__always) public static func exp(_ x: Float) -> Float { FastMath.exp(x) }
    @inline(__always) public static func expm1(_ x: Float) -> Float { FastMath.expm1AndKL(x).expm1 }
    @inline(__always) public static func expm1AndKL(_ x: Float) -> (expm1: Float, kl: Float) {
        FastMath.expm1AndKL(x)
    }
    @inline(__always) public static func log(_ x: Float) -> Float { Glibc.logf(x) }
    public static func auxValues(_ b: UnsafeBufferPointer<Float>) -> AuxValues { .f32(b) }
}

extension Double: LossReal {
    @inline(__always) public static func exp(_ x: Double) -> Double { Glibc.exp(x) }
    @inline(__always) public static func expm1(_ x: Double) -> Double { Glibc.expm1(x) }
    @inline(__always) public static func expm1AndKL(_ x: Double) -> (expm1: Double, kl: Double) {
        let e = Glibc.expm1(x)
        return (e, e - x)
    }
    @inline(__always) public static func log(_ x: Double) -> Double { Glibc.log(x) }
    public static func auxValues(_ b: UnsafeBufferPointer<Double>) -> AuxValues { .f64(b) }
}

/// An element type of the (B,T) float inputs.
public protocol LossStorage: Sendable {
    associatedtype Real: LossReal
    var real: Real { get }
}

extension Float: LossStorage {
    @inline(__always) public var real: Float { self }
}

extension Double: LossStorage {
    @inline(__always) public var real: Double { self }
}

extension Float16: LossStorage {
    @inline(__always) public var real: Float { Float(self) }
}

/// bfloat16 log-probs are read through the one `BFloat16` storage type (LogitElements.swift):
/// raw bits, the top half of a float32.
extension BFloat16: LossStorage {
    @inline(__always) public var real: Float { floatValue }
}

/// Advantages and importance-sampling ratios: small or per-token arrays of any dtype,
/// read one element at a time.
public enum AuxValues {
    case f32(UnsafeBufferPointer<Float>)
    case f64(UnsafeBufferPointer<Double>)
    case bf16(UnsafeBufferPointer<BFloat16>)
    case f16(UnsafeBufferPointer<Float16>)

    public var count: Int {
        switch self {
        case .f32(let b): return b.count
        case .f64(let b): return b.count
        case .bf16(let b): return b.count
        case .f16(let b): return b.count
        }
    }

    @inline(__always) func value<R: LossReal>(_ i: Int, as _: R.Type) -> R {
        switch self {
        case .f32(let b): return R(b[i])
        case .f64(let b): return R(b[i])
        case .bf16(let b): return R(b[i].real)
        case .f16(let b): return R(Float(b[i]))
        }
    }
}

/// The inputs of one loss call: (B,T) arrays of storage type S (see grpo_loss_inputs).
public struct PolicyLossInputs<S: LossStorage> {
    public var batch: Int
    public var length: Int
    public var logps: UnsafeBufferPointer<S>
    public var oldLogps: UnsafeBufferPointer<S>?
    public var refLogps: UnsafeBufferPointer<S>?
    public var samplingLogps: UnsafeBufferPointer<S>?
    public var entropies: UnsafeBufferPointer<S>?
    /// (B) or (B,T).
    public var advantages: AuxValues
    public var mask: UnsafeBufferPointer<UInt8>
    /// (B) / (B,1) or (B,T).
    public var importanceSamplingRatio: AuxValues?

    public init(batch: Int, length: Int, logps: UnsafeBufferPointer<S>,
                oldLogps: UnsafeBufferPointer<S>? = nil, refLogps: UnsafeBufferPointer<S>? = nil,
                samplingLogps: UnsafeBufferPointer<S>? = nil, entropies: UnsafeBufferPointer<S>? = nil,
                advantages: AuxValues, mask: UnsafeBufferPointer<UInt8>,
                importanceSamplingRatio: AuxValues? = nil) {
        self.batch = batch; self.length = length; self.logps = logps; self.oldLogps = oldLogps
        self.refLogps = refLogps; self.samplingLogps = samplingLogps; self.entropies = entropies
        self.advantages = advantages; self.mask = mask
        self.importanceSamplingRatio = importanceSamplingRatio
    }
}

/// Loss, gradients and metrics for Swift callers of the Array API.
public struct PolicyLossResult<R: LossReal> {
    public var loss: Double { metrics.loss }
    public var grad: [R]
    public var gradEntropies: [R]?
    public var metrics: PolicyLossMetrics
}

extension PolicyLoss {
    /// Array convenience (f32 or f64 everywhere). `logps` etc. are (B,T) row-major;
    /// `advantages` is (B) or (B,T); `importanceSamplingRatio` is (B) or (B,T).
    public static func compute<R: LossReal & LossStorage>(
        batch: Int, length: Int, logps: [R], advantages: [R], mask: [UInt8],
        oldLogps: [R]? = nil, refLogps: [R]? = nil, samplingLogps: [R]? = nil,
        entropies: [R]? = nil, importanceSamplingRatio: [R]? = nil,
        config: LossConfig, computeGrad: Bool = true
    ) throws(GRPOError) -> PolicyLossResult<R> where R.Real == R {
        let n = try checkedProduct(batch, length, what: "logps")
        var grad = [R](repeating: 0, count: computeGrad ? n : 0)
        var gradH = [R](repeating: 0, count: computeGrad && config.entropyCoef != 0 ? n : 0)
        func aux(_ a: UnsafeBufferPointer<R>) -> AuxValues { R.auxValues(a) }
        let outcome: Result<PolicyLossMetrics, GRPOError> =
            withOptionalBuffer(oldLogps) { old in
            withOptionalBuffer(refLogps) { ref in
            withOptionalBuffer(samplingLogps) { samp in
            withOptionalBuffer(entropies) { ent in
            withOptionalBuffer(importanceSamplingRatio) { isr in
            logps.withUnsafeBufferPointer { lp in
            advantages.withUnsafeBufferPointer { adv in
            mask.withUnsafeBufferPointer { m in
            grad.withUnsafeMutableBufferPointer { g in
            gradH.withUnsafeMutableBufferPointer { gh in
                let inputs = PolicyLossInputs<R>(
                    batch: batch, length: length, logps: lp, oldLogps: old, refLogps: ref,
                    samplingLogps: samp, entropies: ent, advantages: aux(adv), mask: m,
                    importanceSamplingRatio: isr.map(aux))
                return Result { () throws(GRPOError) in
                    try PolicyLoss.compute(inputs, config: config,
                                           grad: computeGrad ? g : nil,
                                           gradEntropies: computeGrad && config.entropyCoef != 0 ? gh : nil)
                }
            }}}}}}}}}}
        let metrics = try outcome.get()
        return PolicyLossResult(grad: grad, gradEntropies: gradH.isEmpty ? nil : gradH, metrics: metrics)
    }
}

@inline(__always)
func withOptionalBuffer<T, U>(_ a: [T]?, _ body: (UnsafeBufferPointer<T>?) -> U) -> U {
    guard let a else { return body(nil) }
    return a.withUnsafeBufferPointer { body($0) }
}
