// Errors inside the core and their translation to grpo_status.
import CGRPOBridge

/// An error a kernel reports instead of trapping. `CExports+*.swift` turns it into a
/// `grpo_status` plus a message in the caller's buffer.
public struct GRPOError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable {
        case null, shape, value, dtype, overflow, noMemory, interrupted, `internal`
    }
    public let kind: Kind
    public let message: String
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { message }

    var status: grpo_status {
        switch kind {
        case .null: return GRPO_ERR_NULL
        case .shape: return GRPO_ERR_SHAPE
        case .value: return GRPO_ERR_VALUE
        case .dtype: return GRPO_ERR_DTYPE
        case .overflow: return GRPO_ERR_OVERFLOW
        case .noMemory: return GRPO_ERR_NOMEM
        case .interrupted: return GRPO_ERR_INTERRUPTED
        case .internal: return GRPO_ERR_INTERNAL
        }
    }
}

/// Multiplies sizes, reporting overflow instead of trapping.
@inlinable
public func checkedProduct(_ values: Int..., what: String) throws(GRPOError) -> Int {
    var p = 1
    for v in values {
        if v < 0 { throw GRPOError(.shape, "\(what): negative size \(v)") }
        let (r, o) = p.multipliedReportingOverflow(by: v)
        if o { throw GRPOError(.overflow, "\(what): size product overflows (\(values))") }
        p = r
    }
    return p
}
