// The C ABI's library-wide functions, and the helpers every CExports+*.swift file uses.
// Only the CExports*.swift files touch raw C pointers: they turn them into typed buffer
// views (after validating sizes) and turn thrown GRPOErrors into a grpo_status.
import CGRPOBridge

/// Writes `message` NUL-terminated into the caller's buffer, truncated to `errlen` bytes.
func writeError(_ message: String, _ err: UnsafeMutablePointer<CChar>?, _ errlen: Int) {
    guard let err, errlen > 0 else { return }
    var i = 0
    for byte in message.utf8 {
        if i >= errlen - 1 { break }
        err[i] = CChar(bitPattern: byte)
        i += 1
    }
    err[i] = 0
}

/// Runs `body`, mapping a thrown GRPOError to its status and message.
@inline(__always)
func cCall(_ err: UnsafeMutablePointer<CChar>?, _ errlen: Int,
           _ body: () throws(GRPOError) -> Void) -> grpo_status {
    do {
        try body()
        writeError("", err, errlen)
        return GRPO_OK
    } catch {
        writeError(error.message, err, errlen)
        return error.status
    }
}

/// A read-only view of `count` elements at `pointer`; NULL is an error naming `name`.
@inline(__always)
func inputView<T>(_ pointer: UnsafePointer<T>?, _ count: Int, _ name: String)
    throws(GRPOError) -> UnsafeBufferPointer<T>
{
    guard count >= 0 else { throw GRPOError(.shape, "\(name): negative size \(count)") }
    guard let pointer else {
        if count == 0 { return UnsafeBufferPointer(start: nil, count: 0) }
        throw GRPOError(.null, "\(name) is NULL")
    }
    return UnsafeBufferPointer(start: pointer, count: count)
}

/// Like inputView for an optional argument: NULL gives nil.
@inline(__always)
func optionalInputView<T>(_ pointer: UnsafePointer<T>?, _ count: Int, _ name: String)
    throws(GRPOError) -> UnsafeBufferPointer<T>?
{
    guard let pointer else { return nil }
    return try inputView(pointer, count, name)
}

/// A writable view of `count` elements at `pointer`; NULL is an error naming `name`.
@inline(__always)
func outputView<T>(_ pointer: UnsafeMutablePointer<T>?, _ count: Int, _ name: String)
    throws(GRPOError) -> UnsafeMutableBufferPointer<T>
{
    guard count >= 0 else { throw GRPOError(.shape, "\(name): negative size \(count)") }
    guard let pointer else {
        if count == 0 { return UnsafeMutableBufferPointer(start: nil, count: 0) }
        throw GRPOError(.null, "\(name) is NULL")
    }
    return UnsafeMutableBufferPointer(start: pointer, count: count)
}

/// Like outputView for an optional output: NULL gives nil.
@inline(__always)
func optionalOutputView<T>(_ pointer: UnsafeMutablePointer<T>?, _ count: Int, _ name: String)
    throws(GRPOError) -> UnsafeMutableBufferPointer<T>?
{
    guard let pointer else { return nil }
    return try outputView(pointer, count, name)
}

/// Dereferences a config pointer.
@inline(__always)
func configValue<T>(_ pointer: UnsafePointer<T>?, _ name: String) throws(GRPOError) -> T {
    guard let pointer else { throw GRPOError(.null, "\(name) is NULL") }
    return pointer.pointee
}

@c @implementation
public func grpo_abi_version() -> Int32 { 1 }

@c @implementation
public func grpo_status_name(_ status: grpo_status) -> UnsafePointer<CChar>? {
    // Static NUL-terminated strings: StaticString storage lives for the program.
    let name: StaticString
    switch status {
    case GRPO_OK: name = "ok"
    case GRPO_ERR_NULL: name = "null pointer"
    case GRPO_ERR_SHAPE: name = "invalid shape"
    case GRPO_ERR_VALUE: name = "invalid value"
    case GRPO_ERR_DTYPE: name = "unsupported dtype"
    case GRPO_ERR_OVERFLOW: name = "size overflow"
    case GRPO_ERR_NOMEM: name = "out of memory"
    case GRPO_ERR_INTERRUPTED: name = "interrupted"
    case GRPO_ERR_INTERNAL: name = "internal error"
    default: name = "unknown status"
    }
    return UnsafeRawPointer(name.utf8Start).assumingMemoryBound(to: CChar.self)
}

@c @implementation
public func grpo_get_num_threads() -> Int32 { Int32(clamping: Parallel.numThreads) }

@c @implementation
public func grpo_set_num_threads(_ n: Int32) -> grpo_status {
    do { try Parallel.setNumThreads(Int(n)); return GRPO_OK } catch { return error.status }
}

@c @implementation
public func grpo_built_with_avx2() -> Int32 {
    #if arch(x86_64) && canImport(Glibc)
    return builtWithAVX2 ? 1 : 0
    #else
    return 0
    #endif
}

@c @implementation
public func grpo_set_interrupt_flag(_ flag: UnsafePointer<Int32>?) -> grpo_status {
    do { try Interrupt.register(flag.map(UnsafeRawPointer.init)); return GRPO_OK } catch { return error.status }
}

@c @implementation
public func grpo_get_interrupt_flag() -> UnsafePointer<Int32>? {
    Interrupt.current()?.assumingMemoryBound(to: Int32.self)
}
