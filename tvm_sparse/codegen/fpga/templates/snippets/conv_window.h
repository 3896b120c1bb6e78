    static const unsigned kern_h = {{kern_h}}, kern_w = {{kern_w}}, n_kin = {{n_kin}};
    static const unsigned stride_h = {{stride_h}}, stride_w = {{stride_w}};
    static const unsigned dil_h = {{dil_h}}, dil_w = {{dil_w}};
    static const unsigned pad_top = {{pad_top}}, pad_left = {{pad_left}};
