// {{source}}: {{op}} ({{engine}}) {{in_shape}} -> {{out_shape}}
struct config_{{name}} {
{{> snippets/weighted_types.h}}
    static const unsigned n_in = {{n_in}}, n_out = {{n_out}};
    static const unsigned in_h = {{in_h}}, in_w = {{in_w}};
    static const unsigned out_c = {{out_c}}, out_h = {{out_h}}, out_w = {{out_w}};
    static const unsigned stride_h = {{stride_h}}, stride_w = {{stride_w}};
    static const unsigned pad_top = {{pad_top}}, pad_left = {{pad_left}};
    static const unsigned pad_h = {{pad_h}}, pad_w = {{pad_w}}, n_padded = {{n_padded}};
    static const bool relu = {{relu}};
    static const unsigned lanes = {{lanes}}, pe = {{pe}}, simd = {{simd}};
    static const unsigned row_steps = {{row_steps}}, acc_ii = {{acc_ii}};
};
