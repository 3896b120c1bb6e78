// {{source}}: {{op}} ({{engine}}) {{in_shape}} -> {{out_shape}}
struct config_{{name}} {
{{> snippets/weighted_types.h}}
    static const unsigned n_in = {{n_in}}, n_out = {{n_out}};
    static const unsigned out_c = {{out_c}}, n_kin = {{n_kin}};
    static const bool relu = {{relu}};
    static const unsigned lanes = {{lanes}}, pe = {{pe}}, simd = {{simd}};
    static const unsigned row_steps = {{row_steps}}, acc_ii = {{acc_ii}};
};
