// Rows grouped by explicit int64 group ids (any values, any order, variable group sizes),
// or by "G consecutive rows". The advantage estimators work group by group over this index.

/// A partition of `rows` rows into groups. `order[starts[g]..<starts[g+1]]` are the rows of
/// group g in ascending row order (so every per-group reduction runs in row order and does not
/// depend on how the ids are numbered or permuted). The order of the groups themselves is
/// unspecified (results never depend on it: groups are independent).
public struct RowGroups: Sendable {
    public let rows: Int
    public let order: [Int]
    public let starts: [Int]
    /// Rows of the largest group.
    public let maxSize: Int
    /// order == 0..<rows: every group is a contiguous run of rows.
    public let isIdentity: Bool

    public var count: Int { starts.count - 1 }

    /// Rows of group `g` (indices into the caller's arrays), ascending.
    @inline(__always)
    func members(_ g: Int) -> ArraySlice<Int> { order[starts[g]..<starts[g + 1]] }

    /// Groups of `numGenerations` consecutive rows; `rows` must be a multiple of it.
    public init(rows: Int, numGenerations g: Int) throws(GRPOError) {
        guard rows > 0 else { throw GRPOError(.shape, "rewards must have at least one row, got \(rows)") }
        guard g >= 1 else { throw GRPOError(.value, "num_generations must be >= 1, got \(g)") }
        guard rows % g == 0 else {
            throw GRPOError(.shape, "the number of rows (\(rows)) must be a multiple of num_generations (\(g))")
        }
        self.rows = rows
        order = Array(0..<rows)
        starts = Array(stride(from: 0, through: rows, by: g))
        maxSize = g
        isIdentity = true
    }

    /// The same groups over data gathered into `order` (row j of the result is row order[j]).
    init(gathered g: RowGroups) {
        rows = g.rows
        order = Array(0..<g.rows)
        starts = g.starts
        maxSize = g.maxSize
        isIdentity = true
    }

    /// Groups given by one id per row: rows with equal ids form a group.
    public init(ids: UnsafeBufferPointer<Int64>, rows: Int) throws(GRPOError) {
        guard rows > 0 else { throw GRPOError(.shape, "rewards must have at least one row, got \(rows)") }
        guard ids.count >= rows else {
            throw GRPOError(.shape, "group_ids holds \(ids.count) elements, expected \(rows)")
        }
        self.rows = rows
        // Fast path: every id's rows form one contiguous run (TRL/verl layouts, sorted or not).
        // (Checked only when runs average >= 4 rows: the check sorts one id per run.)
        var runStarts = [0]
        var tooManyRuns = false
        for i in 1..<rows where ids[i] != ids[i - 1] {
            runStarts.append(i)
            if runStarts.count > rows / 4 + 1 { tooManyRuns = true; break }
        }
        if !tooManyRuns {
            runStarts.append(rows)
            let runs = runStarts.count - 1
            var runIDs = [Int64](unsafeUninitializedCapacity: runs) { buf, count in
                for r in 0..<runs { buf[r] = ids[runStarts[r]] }
                count = runs
            }
            runIDs.sort()
            var unique = true
            for r in 1..<runs where runIDs[r] == runIDs[r - 1] { unique = false; break }
            if unique {
                var maxSize = 1
                for r in 0..<runs { maxSize = Swift.max(maxSize, runStarts[r + 1] - runStarts[r]) }
                self.order = Array(0..<rows)
                self.starts = runStarts
                self.maxSize = maxSize
                self.isIdentity = true
                return
            }
        }
        // General case: a stable sort by id (rows with equal ids keep ascending row order).
        let (order, keys) = RowGroups.radixOrder(ids, rows)
        var starts = [0]
        var maxSize = 1, run = 1
        for j in 1..<rows {
            if keys[j] != keys[j - 1] {
                starts.append(j)
                run = 1
            } else {
                run += 1
                maxSize = Swift.max(maxSize, run)
            }
        }
        starts.append(rows)
        self.order = order
        self.starts = starts
        self.maxSize = maxSize
        self.isIdentity = false
    }

    /// Row indices sorted by id, stable, and the sorted keys (LSD radix sort on the order-preserving unsigned image
    /// of the int64 ids, 8 bits a pass; passes where every key has the same byte are skipped).
    static func radixOrder(_ ids: UnsafeBufferPointer<Int64>, _ rows: Int) -> (order: [Int], keys: [UInt64]) {
        var keys = [UInt64](unsafeUninitializedCapacity: rows) { buf, count in
            for i in 0..<rows { buf[i] = UInt64(bitPattern: ids[i]) ^ (1 << 63) }
            count = rows
        }
        var order = Array(0..<rows)
        var keys2 = [UInt64](repeating: 0, count: rows)
        var order2 = [Int](repeating: 0, count: rows)
        var hist = [Int](repeating: 0, count: 256)
        for pass in 0..<8 {
            let shift = UInt64(pass * 8)
            var skip = false
            keys.withUnsafeBufferPointer { k in
                hist.withUnsafeMutableBufferPointer { h in
                    for b in 0..<256 { h[b] = 0 }
                    for i in 0..<rows { h[Int((k[i] >> shift) & 0xFF)] += 1 }
                    skip = h[Int((k[0] >> shift) & 0xFF)] == rows
                    var sum = 0
                    for b in 0..<256 { let c = h[b]; h[b] = sum; sum += c }
                }
            }
            if skip { continue }
            keys.withUnsafeBufferPointer { k in
                order.withUnsafeBufferPointer { o in
                    keys2.withUnsafeMutableBufferPointer { k2 in
                        order2.withUnsafeMutableBufferPointer { o2 in
                            hist.withUnsafeMutableBufferPointer { h in
                                for i in 0..<rows {
                                    let b = Int((k[i] >> shift) & 0xFF)
                                    let dst = h[b]
                                    h[b] = dst + 1
                                    k2[dst] = k[i]
                                    o2[dst] = o[i]
                                }
                            }
                        }
                    }
                }
            }
            swap(&keys, &keys2)
            swap(&order, &order2)
        }
        return (order, keys)
    }

    /// One group id per group index g, for error messages: the id of its first row.
    func describe(_ g: Int, ids: UnsafeBufferPointer<Int64>?) -> String {
        if let ids { return "group id \(ids[order[starts[g]]])" }
        return "group \(g) (rows \(starts[g])..<\(starts[g + 1]))"
    }
}
