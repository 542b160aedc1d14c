// Rows grouped by explicit int64 group ids (any values, any order, variable group sizes),
// or by "G consecutive rows". The advantage estimators work group by group over this index.

/// A partition of `rows` rows into groups. `order[starts[g]..<starts[g+1]]` are the rows of
/// group g in ascending row order (so every per-group reduction runs in row order and does not
/// depend on how the ids are numbered or permuted). Groups are ordered by ascending id.
public struct RowGroups: Sendable {
    public let rows: Int
    public let order: [Int]
    public let starts: [Int]
    /// Rows of the largest group.
    public let maxSize: Int

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
    }

    /// Groups given by one id per row: rows with equal ids form a group.
    public init(ids: UnsafeBufferPointer<Int64>, rows: Int) throws(GRPOError) {
        guard rows > 0 else { throw GRPOError(.shape, "rewards must have at least one row, got \(rows)") }
        guard ids.count >= rows else {
            throw GRPOError(.shape, "group_ids holds \(ids.count) elements, expected \(rows)")
        }
        self.rows = rows
        var order = Array(0..<rows)
        var sorted = true
        for i in 1..<rows where ids[i] < ids[i - 1] { sorted = false; break }
        if !sorted {
            // (id, row) is a total order: the result is unique whatever the sort algorithm.
            order.sort { a, b in ids[a] != ids[b] ? ids[a] < ids[b] : a < b }
        }
        var starts = [0]
        var maxSize = 1, run = 1
        for j in 1..<rows {
            if ids[order[j]] != ids[order[j - 1]] {
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
    }

    /// One group id per group index g, for error messages: the id of its first row.
    func describe(_ g: Int, ids: UnsafeBufferPointer<Int64>?) -> String {
        if let ids { return "group id \(ids[order[starts[g]]])" }
        return "group \(g) (rows \(starts[g])..<\(starts[g + 1]))"
    }
}
